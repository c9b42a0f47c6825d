"""Every artifact path of the pipeline, relative to the project root. dvc.yaml names the same paths."""
from pathlib import Path

PREPARED = Path("data/prepared")                       # prepare: {train,val,test}-NNNNN.parquet
ANNOTATIONS = Path("data/annotations")                 # tag, ground, caption, describe
ANNOTATION_FIGURE = Path("outputs/figures/annotations.png")
ANNOTATIONS_HELDOUT = Path("data/annotations_test")    # annotate_heldout: the test split, labels hidden
ANNOTATION_CACHE_HELDOUT = Path("data/annotation_cache_test")
FEATURES = Path("data/features")                       # embed_image, embed_text
FEATURES_HELDOUT = Path("data/features_test")
ALIGNED = Path("data/aligned")                         # align
PAIR_EVENTS = ALIGNED / "pair_forgetting.parquet"
ALIGN_METRICS = Path("outputs/metrics/align.json")     # every *_METRICS file: measured numbers only;
ALIGN_RECORD = ALIGNED / "record.json"                 # its *_RECORD: what produced them (counts, settings)
FORGETTING_EVENTS = Path("data/forgetting/events.parquet")
SELECTIONS = Path("data/selections")                   # select
SELECTION_FIGURES = Path("outputs/figures/selection")
PROTOTYPES = Path("data/prototypes")                   # prototypes
POOL = Path("data/pretrained/pool.pt")                 # pretrain: DSDM's network pool
VAE_DIR = Path("data/vae")                             # vae --method M: data/vae/M (distill.latent.vae: offline)
VAE_RECORD_NAME = "record.json"                        # in data/vae/M: what produced the VAE and its metrics
DIFFUSION_DIR = Path("data/diffusion")                 # finetune_diffusion --method M: data/diffusion/M (pipeline)
DIFFUSION_RECORD_NAME = "record.json"                  # in data/diffusion/M: what produced it, its training loss
CAPTION_HEAD = Path("data/caption_head/head.pt")
CAPTION_HEAD_METRICS = Path("outputs/metrics/caption_head.json")
CAPTION_HEAD_RECORD = CAPTION_HEAD.parent / "record.json"
DISTILLED = Path("data/distilled")                     # distill: {run}.pt, run = run_name(method, ipc, latent)
DISTILLED_FIGURES = Path("outputs/figures/distilled")
CHECKPOINTS = Path("data/checkpoints")
DISTILL_LOGS = Path("outputs/distill")                 # the last loss and grids per run
METRICS = Path("outputs/metrics")                      # evaluate: {run}.json, accuracies only
FULL_METRICS = METRICS / "full.json"
EVALUATIONS = Path("outputs/evaluate")                 # evaluate: {method}-ipc{K}.json, what produced the metrics
FULL_EVALUATION = EVALUATIONS / "full.json"
REPORT = Path("outputs/report.md")
ACCURACY_PLOTS = Path("outputs/plots/accuracy")        # report: {method}.json, test accuracy by IPC (dvc plots)
LOSS_CURVES = Path("outputs/plots/loss")               # distill: {run}.tsv, the loss by iteration (dvc plots)
TIMINGS = Path("outputs/timings")                      # wall seconds of a stage's last run: not DVC outputs and
BUFFER_TIMINGS = TIMINGS / "buffer.json"               # not in git (they differ on every run); diffusion_timings


def run_name(method: str, ipc: int, latent: bool) -> str:
    """One distillation run's name: `{method}-ipc{K}`, or `{method}-latent-ipc{K}` in the latent parameterisation.
    It names the run's distilled set, figure, checkpoint, loss log and metrics file."""
    return f"{method}-latent-ipc{ipc}" if latent else f"{method}-ipc{ipc}"


def distilled_set(run: str) -> Path:
    return DISTILLED / f"{run}.pt"


def distilled_figure(run: str) -> Path:
    return DISTILLED_FIGURES / f"{run}.png"


def checkpoint(run: str) -> Path:
    return CHECKPOINTS / f"{run}.pt"


def distill_log(run: str) -> Path:
    return DISTILL_LOGS / run


def run_metrics(run: str) -> Path:
    return METRICS / f"{run}.json"


def selection(method: str, ipc: int) -> Path:
    """Stage select's real images for `method` (kmeans, herding, kcenter, forgetting, forgetting_most) at IPC `ipc`."""
    return SELECTIONS / f"{method}-ipc{ipc}.parquet"


def vae_dir(method: str) -> Path:
    """The offline VAE (stage vae --method M) of `method`'s latent runs."""
    return VAE_DIR / method


def vae_metrics(method: str) -> Path:
    return METRICS / "vae" / f"{method}.json"


def diffusion_dir(method: str) -> Path:
    """The text-to-image pipeline (stage finetune_diffusion --method M) a synthesis method generates with."""
    return DIFFUSION_DIR / method


def diffusion_metrics(method: str) -> Path:
    return METRICS / "diffusion" / f"{method}.json"


def diffusion_timings(method: str) -> Path:
    """The wall seconds of each training epoch of the last run (not a DVC output)."""
    return TIMINGS / "diffusion" / f"{method}.json"


def diffusion_checkpoints(method: str) -> Path:
    """Stage finetune_diffusion's checkpoints (the offline pipeline before training, one file per epoch)."""
    return CHECKPOINTS / f"diffusion-{method}"

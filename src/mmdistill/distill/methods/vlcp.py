"""vlcp: Dataset Distillation via Vision-Language Category Prototype (VLCP), classification synthesis.

Per class, on the image features of stage embed_image (`embed.image_encoder`), stage select removes LOF outliers
(`select.lof_neighbors`, `select.lof_contamination`) and clusters the inliers with k-means, k = IPC (n_init
`select.kmeans_n_init`, random_state `seed`): data/selections/kmeans-ipc{K}. Each cluster gives one synthetic image:

  init    the real inlier image nearest the cluster centre (a real image, not a decoded centre)
  prompt  the cluster's text prototype (mmdistill.selection.coresets.text_prototype_rows, the rows stage prototypes
          writes: the member description richest in the cluster's top `select.text_top_k` words, words used by more
          than `select.text_threshold` of the class's descriptions left out), written as the pipeline's training
          captions were (`diffusion.class_name` mask: the class name replaced by "item")
  image   img2img of stage finetune_diffusion's pipeline (data/diffusion/vlcp, mmdistill.nn.diffusion): the init
          image at `diffusion.resolution`, noised to `strength` of a `steps`-step schedule and denoised with the prompt
          at classifier-free guidance `guidance_scale` (paper: 0.7 and 10), one seeded generator per image; resized
          back to the data's size and channels and rounded to 8-bit pixels.

The set's source_uids are the init images; its `prompts` entry holds each image's prompt and `diffusion` the
pipeline's model, class_name and weight digest.
"""
from __future__ import annotations

import hashlib
import json

from mmdistill.core.config import Float, Int, param
from mmdistill.core.paths import DIFFUSION_RECORD_NAME, diffusion_dir
from mmdistill.core.storage import PipelineError
from mmdistill.data.datasets import normalize
from mmdistill.distill.engine import Run
from mmdistill.distill.initial import selected
from mmdistill.distill.methods import Method, Synthetic


def pipeline_digest(folder) -> str:
    """SHA-256 over the pipeline folder's weight files."""
    hasher = hashlib.sha256()
    for path in sorted(folder.rglob("*.safetensors")):
        hasher.update(str(path.relative_to(folder)).encode() + path.read_bytes())
    return hasher.hexdigest()[:16]


def prompts_and_inits(run: Run, class_name: str) -> tuple[list[str], list[int]]:
    """The text prototype (as a prompt) and the init image (train index) of every cluster, class-major."""
    from mmdistill.nn.diffusion import captions_for
    from mmdistill.selection.coresets import text_prototype_inputs, text_prototype_rows
    init = selected(run.train, "kmeans", run.ipc)
    rows = text_prototype_rows(text_prototype_inputs(), run.ipc, param(run.params, "select.text_threshold", float),
                               param(run.params, "select.text_top_k", int))
    rows.sort(key=lambda r: (r["label"], r["cluster"]))
    labels = run.train.labels[init].tolist()
    if [r["label"] for r in rows] != labels:
        raise PipelineError(f"the text prototypes of kmeans-ipc{run.ipc} do not match its clusters; re-run "
                            "`dvc repro select`")
    return captions_for([r["description"] for r in rows], labels, run.train.class_names, class_name), init


def run_vlcp(run: Run) -> Synthetic:
    from mmdistill.nn.diffusion import generate, load_pipeline
    settings = run.settings
    folder = diffusion_dir(run.method)
    record_path = folder / DIFFUSION_RECORD_NAME
    if not record_path.exists():
        raise PipelineError(f"{folder} holds no pipeline: run `python -m mmdistill.stages.finetune_diffusion "
                            f"--method {run.method}` (DVC stage finetune_diffusion@{run.method})")
    record = json.loads(record_path.read_text())
    prompts, init = prompts_and_inits(run, record["class_name"])
    pipe = load_pipeline(str(folder), None, f"stage finetune_diffusion's {folder}")
    pixels = generate(pipe, run.train.images[init].float() / 255, prompts, strength=settings["strength"],
                      guidance_scale=settings["guidance_scale"], steps=settings["steps"], seed=run.seed,
                      batch_size=settings["batch_size"], resolution=record["resolution"], keys=run.where,
                      device=run.device)
    images = normalize(pixels, run.train.mean, run.train.std)
    return Synthetic(images, init, [], extra={"prompts": prompts, "diffusion": {
        "model": record["model"], "class_name": record["class_name"], "resolution": record["resolution"],
        "digest": pipeline_digest(folder)}})


METHOD = Method("vlcp", group="synthesis", family=None, run=run_vlcp, engine=False, keys={
    "strength": Float(above=0, high=1),
    "guidance_scale": Float(low=1),
    "steps": Int(low=1),
    "batch_size": Int(low=1),
})

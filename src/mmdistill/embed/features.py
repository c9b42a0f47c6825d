"""Features of images, masked instances, captions and descriptions.

The stage, its outputs and their schema: mmdistill.stages.embed. `embed.engine`: local (one encoder in the stage's
process) | ray (EncoderWorker on the Ray Data actors of `embed.ray`, mmdistill.core.ray_actors, over batches of
`embed.batch_size` images or distinct texts; the same batches as the local engine, so the same features, see
encode_jobs).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import torch
import torch.nn.functional as F

from mmdistill.annotate.cache import (
    ENGINES,
    PIPELINE,
    AnnotationTarget,
    annotation_backend,
    load_annotation_input,
    read_annotations,
)
from mmdistill.core.config import param, positive
from mmdistill.core.paths import FEATURES
from mmdistill.core.ray_actors import run_on_actors
from mmdistill.core.runtime import resolve_device
from mmdistill.core.storage import (
    PipelineError,
    atomic_path,
    check_writable,
    decode_image,
    read_parquet,
    read_parquet_metadata,
    save_npy,
    write_parquet,
)
from mmdistill.data.datasets import decode_images
from mmdistill.nn.pretrained import EfficientNetLite0, MiniLM, batched

KINDS = ("image", "instance", "caption", "description")


def unique_encode(encode_batch, texts: list[str], batch_size: int, desc: str) -> np.ndarray:
    """Encode each distinct text once (captions repeat a lot), in batches with a progress bar."""
    unique = sorted(set(texts))
    out = [encode_batch(unique[sl]) for sl in batched(len(unique), batch_size, desc)]
    vecs = np.concatenate(out) if out else np.zeros((0, 1), np.float32)
    index = {t: i for i, t in enumerate(unique)}
    return vecs[[index[t] for t in texts]].astype(np.float32)


def to_pil(images: torch.Tensor) -> list:
    """uint8 N x C x H x W -> RGB PIL images."""
    from PIL import Image
    pixels = images.expand(-1, 3, -1, -1) if images.shape[1] == 1 else images
    return [Image.fromarray(a) for a in pixels.permute(0, 2, 3, 1).numpy()]


class OpenClip:
    """An open_clip model (built-in name + pretrained tag or checkpoint file, or `local-dir:/path`).

    Images go through the model's own preprocessing; images and texts land in its joint space.
    """

    def __init__(self, model: str, pretrained, device):
        import open_clip
        pt_weights = None
        if model.startswith("local-dir:"):
            folder = Path(model[len("local-dir:"):])
            weights = [p for p in folder.glob("*") if p.suffix in (".safetensors", ".bin", ".pth", ".pt")]
            if not (folder / "open_clip_config.json").is_file() or not weights:
                raise PipelineError(f"param 'embed.open_clip.model' = {model!r}: the folder needs "
                                    "open_clip_config.json and a weights file (.safetensors/.bin/.pth/.pt)")
            if all(p.suffix == ".pt" for p in weights):  # open_clip looks only for .safetensors/.bin/.pth
                if len(weights) > 1:
                    raise PipelineError(f"param 'embed.open_clip.model' = {model!r}: several weights files "
                                        f"({', '.join(sorted(p.name for p in weights))}); keep one")
                pt_weights = weights[0]
            pretrained = None
        elif not pretrained:
            raise PipelineError(f"param 'embed.open_clip.pretrained' is empty: open_clip model {model!r} would "
                                "have random weights; give a pretrained tag or a checkpoint file")
        try:
            # require_pretrained: open_clip raises instead of warning and building random weights
            self.model, _, self.preprocess = open_clip.create_model_and_transforms(
                model, pretrained=pretrained, device=device, load_weights=pt_weights is None,
                require_pretrained=pt_weights is None)
            self.tokenizer = open_clip.get_tokenizer(model)
        except Exception as exc:  # open_clip raises RuntimeError/ValueError/OSError for missing weights
            raise PipelineError(f"could not load open_clip model {model!r} with pretrained {pretrained!r} "
                                f"(params 'embed.open_clip.model'/'pretrained'): {exc}. Without internet, the "
                                "weights must be in the Hugging Face cache, or give a checkpoint file or "
                                "local-dir:/path") from exc
        if pt_weights is not None:
            try:  # a state dict (torch.load with weights_only=True); every key must match the model's
                open_clip.load_checkpoint(self.model, str(pt_weights), strict=True, weights_only=True)
            except Exception as exc:
                raise PipelineError(f"param 'embed.open_clip.model' = {model!r}: {pt_weights.name} is not a "
                                    f"state dict of the model in open_clip_config.json: {exc}") from exc
        self.model.eval()
        self.device = device
        self.settings = {"model": model, "pretrained": pretrained,
                         "preprocess": {k: (list(v) if isinstance(v, tuple) else v)
                                        for k, v in self.model.visual.preprocess_cfg.items()},
                         "space": f"open_clip {model} {pretrained}"}

    @torch.no_grad()
    def features(self, images: torch.Tensor) -> torch.Tensor:
        x = torch.stack([self.preprocess(im) for im in to_pil(images)]).to(self.device)
        return F.normalize(self.model.encode_image(x).float(), dim=1).cpu()

    @torch.no_grad()
    def encode(self, texts: list[str], batch_size: int) -> np.ndarray:
        def encode_batch(batch):
            out = self.model.encode_text(self.tokenizer(batch).to(self.device)).float()
            return F.normalize(out, dim=1).cpu().numpy()
        return unique_encode(encode_batch, texts, batch_size, "embed texts")


class HFClip:
    """A transformers CLIPModel + CLIPProcessor (hub id in the local cache, or a saved folder)."""

    def __init__(self, model: str, device):
        from transformers import CLIPModel, CLIPProcessor
        try:
            self.model = CLIPModel.from_pretrained(model).eval().to(device)
            self.processor = CLIPProcessor.from_pretrained(model)
        except (OSError, ValueError) as exc:
            raise PipelineError(f"could not load transformers CLIPModel {model!r} (param 'embed.hf_clip.model'): "
                                f"{exc}. Without internet, give a folder saved with save_pretrained or a model "
                                "already in the Hugging Face cache") from exc
        self.device = device
        size = self.processor.image_processor.crop_size
        self.settings = {"model": model, "image_size": [size["height"], size["width"]],
                         "space": f"hf_clip {model}"}

    @staticmethod
    def _pooled(out) -> torch.Tensor:
        return out if isinstance(out, torch.Tensor) else out.pooler_output  # transformers 5 returns an output object

    @torch.no_grad()
    def features(self, images: torch.Tensor) -> torch.Tensor:
        pixels = self.processor(images=to_pil(images), return_tensors="pt")["pixel_values"].to(self.device)
        return F.normalize(self._pooled(self.model.get_image_features(pixel_values=pixels)).float(), dim=1).cpu()

    @torch.no_grad()
    def encode(self, texts: list[str], batch_size: int) -> np.ndarray:
        def encode_batch(batch):
            tokens = self.processor(text=batch, return_tensors="pt", padding=True, truncation=True).to(self.device)
            out = self._pooled(self.model.get_text_features(**tokens)).float()
            return F.normalize(out, dim=1).cpu().numpy()
        return unique_encode(encode_batch, texts, batch_size, "embed texts")


def open_clip_encoder(params, device):
    return OpenClip(param(params, "embed.open_clip.model", str), param(params, "embed.open_clip.pretrained", str),
                    device)


def hf_clip_encoder(params, device):
    return HFClip(param(params, "embed.hf_clip.model", str), device)


def efficientnet_encoder(params, device):
    encoder = EfficientNetLite0(device, positive(params, "embed.input_size"))
    encoder.settings = {"input_size": encoder.input_size, "space": "efficientnet_lite0"}
    return encoder


def minilm_encoder(params, device):
    encoder = MiniLM(device)
    encoder.settings = {"space": "minilm"}
    return encoder


IMAGE_ENCODERS = {"efficientnet_lite0": efficientnet_encoder, "open_clip": open_clip_encoder,
                  "hf_clip": hf_clip_encoder}
TEXT_ENCODERS = {"minilm": minilm_encoder, "open_clip": open_clip_encoder, "hf_clip": hf_clip_encoder}


def build_encoder(params, key: str, registry: dict, device):
    name = param(params, key, str)
    if name not in registry:
        raise PipelineError(f"unknown encoder {name!r} (param '{key}'); valid: {', '.join(sorted(registry))}")
    return name, registry[name](params, device)


def write_features(kind: str, index: dict, vectors: np.ndarray, encoder: str, settings: dict,
                   rows_per_shard: int, root=FEATURES, extra: dict | None = None) -> None:
    with atomic_path(Path(root) / kind) as tmp:
        tmp.mkdir()
        for i, start in enumerate(range(0, max(len(vectors), 1), rows_per_shard)):
            save_npy(vectors[start:start + rows_per_shard].astype(np.float16), tmp / f"vectors-{i:05d}.npy")
        write_parquet(index, tmp / "index.parquet", {"features": {"encoder": encoder, "settings": settings,
                                                                  "dim": int(vectors.shape[1]), **(extra or {})}})


def load_features(kind: str, root=FEATURES):
    """(index table, float32 matrix) for one kind of features. An unreadable shard, or a vector holding NaN or
    inf, is a PipelineError naming the shard, the row and its uid."""
    if kind not in KINDS:
        raise PipelineError(f"unknown feature kind {kind!r}; valid: {', '.join(KINDS)}")
    index = read_parquet(Path(root) / kind / "index.parquet")
    shards = sorted((Path(root) / kind).glob("vectors-*.npy"))
    arrays, offset = [], 0
    for shard in shards:
        try:
            array = np.load(shard, allow_pickle=False)
        except (OSError, ValueError, EOFError) as exc:
            raise PipelineError(f"{shard}: not a readable feature shard ({exc}); re-run `dvc repro embed`") from exc
        if array.ndim != 2 or not np.issubdtype(array.dtype, np.floating):
            raise PipelineError(f"{shard}: a feature shard must be a 2-d float array, got {array.dtype} "
                                f"{array.shape}; re-run `dvc repro embed`")
        bad = ~np.isfinite(array).all(1)
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            uid = index["uid"][offset + row].as_py() if "uid" in index.column_names and \
                offset + row < index.num_rows else "?"
            raise PipelineError(f"{shard}: row {row} (uid {uid}) holds NaN or inf; the features are corrupt or "
                                "were made from bad input: re-run `dvc repro embed`")
        arrays.append(array)
        offset += len(array)
    vectors = np.concatenate(arrays).astype(np.float32) if arrays else np.zeros((0, 0))
    if len(vectors) != index.num_rows:
        raise PipelineError(f"{root}/{kind}: index has {index.num_rows} rows but shards hold {len(vectors)}; "
                            "re-run `dvc repro embed`")
    return index, vectors


def feature_metadata(kind: str, root=FEATURES) -> dict:
    return read_parquet_metadata(Path(root) / kind / "index.parquet").get("features", {})


def encode_images(encoder, images: torch.Tensor, batch_size: int, desc: str) -> np.ndarray:
    out = [encoder.features(images[sl]).numpy() for sl in batched(len(images), batch_size, desc)]
    return np.concatenate(out) if out else np.zeros((0, 1), np.float32)


class EncoderWorker:
    """The encoder of param `key` (embed.image_encoder or embed.text_encoder) on the device of param `device`,
    loaded once. `run((what, inputs, desc))` -> (vectors, encoder name, its settings) of uint8 images (`what`
    "images", in batches of embed.batch_size) or texts ("texts", each distinct text once). The local engine runs
    one in the stage's process, the Ray engine one per actor."""

    def __init__(self, params: dict, key: str):
        registry = IMAGE_ENCODERS if key == "embed.image_encoder" else TEXT_ENCODERS
        self.name, self.encoder = build_encoder(params, key, registry, resolve_device(params))
        self.batch_size = positive(params, "embed.batch_size")

    def run(self, job: tuple) -> tuple[np.ndarray, str, dict]:
        what, inputs, desc = job
        if what == "images":
            vectors = encode_images(self.encoder, inputs, self.batch_size, desc)
        else:
            vectors = self.encoder.encode(inputs, self.batch_size)
        return vectors, self.name, self.encoder.settings


def encode_jobs(params: dict, key: str, jobs: list[tuple]) -> tuple[list[np.ndarray], str, dict]:
    """Each job (what, inputs, desc) of EncoderWorker.run encoded by the encoder of param `key` -> (the vectors of
    each job, encoder name, its settings), on the engine of `embed.engine`. Ray: a job is cut into batches of
    embed.batch_size (texts: of its distinct texts, sorted, as the encoders batch them), one actor call each, so
    an actor encodes the very batches the local engine does: the same images give the same bytes with the same
    thread count; all-MiniLM-L6-v2 regroups a batch by length itself, so its text vectors agree to float rounding."""
    engine = param(params, "embed.engine", str, choices=ENGINES)
    if engine == "local":
        worker = EncoderWorker(params, key)
        return [worker.run(job)[0] for job in jobs], worker.name, worker.encoder.settings
    batch_size = positive(params, "embed.batch_size")
    pieces, plan = [], []
    for what, inputs, desc in jobs:
        distinct = sorted(set(inputs)) if what == "texts" else inputs
        starts = range(0, len(distinct), batch_size)
        # a tensor slice is cloned: pickling a view would send its whole storage to every actor
        pieces += [(what, distinct[i:i + batch_size].clone() if what == "images" else distinct[i:i + batch_size],
                    desc) for i in starts]
        plan.append((what, inputs, distinct, len(starts)))
    if not pieces:
        raise PipelineError(f"embed.engine ray: nothing to encode with param '{key}'")
    results = run_on_actors(params, "embed.ray", EncoderWorker, (params, key), pieces)
    out, done = [], 0
    for what, inputs, distinct, count in plan:
        parts = [vectors for vectors, _, _ in results[done:done + count]]
        done += count
        vectors = np.concatenate(parts) if parts else np.zeros((0, 1), np.float32)
        if what == "texts":
            row = {text: i for i, text in enumerate(distinct)}
            vectors = vectors[[row[text] for text in inputs]]
        out.append(vectors.astype(np.float32))
    _, name, settings = results[0]
    return out, name, settings


def embed_images(params, batch_size, rows_per_shard) -> str:
    check_writable(FEATURES / "image", FEATURES / "instance")
    table = load_annotation_input(("uid", "label", "image"))
    # images the annotation stages skipped as corrupt (annotate.on_error: skip) are left out here too
    skipped = sorted(annotation_backend("instances").get("skipped_uids", []))
    extra = {"skipped_uids": skipped} if skipped else None
    if skipped:
        keep = set(table["uid"].to_pylist()) - set(skipped)
        table = table.filter(pa.array([u in keep for u in table["uid"].to_pylist()]))
        print(f"embed: leaving out {len(skipped)} image(s) the annotation stages skipped: {', '.join(skipped)}")
    uids, labels = table["uid"].to_pylist(), table["label"].to_pylist()
    images = torch.from_numpy(decode_images(table["image"].to_pylist(), uids, channels=3))
    inst = read_annotations("instances", ["uid", "instance_id", "mask"])
    position = {u: i for i, u in enumerate(uids)}
    inst_uids = inst["uid"].to_pylist()
    masks = np.stack([decode_image(b, f"mask of {u}", "L") > 0 for u, b in zip(inst_uids, inst["mask"].to_pylist())]) \
        if inst_uids else np.zeros((0,) + tuple(images.shape[2:]), bool)
    masked = images[[position[u] for u in inst_uids]] * torch.from_numpy(masks)[:, None]
    (image_vectors, instance_vectors), name, settings = encode_jobs(
        params, "embed.image_encoder", [("images", images, "embed images"), ("images", masked, "embed instances")])
    embed_settings = {"batch_size": batch_size} | settings
    write_features("image", {"uid": uids, "label": labels}, image_vectors, name, embed_settings, rows_per_shard,
                   extra=extra)
    write_features("instance", {"uid": inst_uids, "label": [labels[position[u]] for u in inst_uids],
                                "instance_id": inst["instance_id"].to_pylist()},
                   instance_vectors, name, embed_settings, rows_per_shard, extra=extra)
    return f"{len(uids)} images and {len(inst_uids)} instances with {name}"


def embed_captions(encoder, name: str, embed_settings: dict, label_of: dict, batch_size: int, rows_per_shard: int,
                   root=FEATURES, target: AnnotationTarget = PIPELINE) -> list:
    """Encode `target`'s captions.parquet into `root`/caption; returns the caption uids."""
    check_writable(Path(root) / "caption")
    caps = read_annotations("captions", ["uid", "instance_id", "caption"], target)
    write_captions(caps, encoder.encode(caps["caption"].to_pylist(), batch_size), name, embed_settings, label_of,
                   rows_per_shard, root)
    return caps["uid"].to_pylist()


def write_captions(caps: pa.Table, vectors: np.ndarray, name: str, embed_settings: dict, label_of: dict,
                   rows_per_shard: int, root=FEATURES) -> None:
    cap_uids = caps["uid"].to_pylist()
    write_features("caption", {"uid": cap_uids, "label": [label_of[u] for u in cap_uids],
                               "instance_id": caps["instance_id"].to_pylist()},
                   vectors, name, embed_settings, rows_per_shard, root=root)


def embed_texts(params, batch_size, rows_per_shard) -> str:
    check_writable(FEATURES / "caption", FEATURES / "description")
    table = load_annotation_input(("uid", "label"))
    label_of = dict(zip(table["uid"].to_pylist(), table["label"].to_pylist()))
    caps = read_annotations("captions", ["uid", "instance_id", "caption"])
    desc = read_annotations("descriptions", ["uid", "description"])
    (caption_vectors, description_vectors), name, settings = encode_jobs(
        params, "embed.text_encoder", [("texts", caps["caption"].to_pylist(), "embed captions"),
                                       ("texts", desc["description"].to_pylist(), "embed descriptions")])
    embed_settings = {"batch_size": batch_size} | settings
    write_captions(caps, caption_vectors, name, embed_settings, label_of, rows_per_shard)
    cap_uids = caps["uid"].to_pylist()
    desc_uids = desc["uid"].to_pylist()
    write_features("description", {"uid": desc_uids, "label": [label_of[u] for u in desc_uids]},
                   description_vectors, name, embed_settings, rows_per_shard)
    return f"{len(cap_uids)} captions and {len(desc_uids)} descriptions with {name}"

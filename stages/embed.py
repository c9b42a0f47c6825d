"""embed: features of images, masked instances, captions and descriptions -> data/features/

    python -m stages.embed --modality image   # DVC stage embed_image: image, instance
    python -m stages.embed --modality text    # DVC stage embed_text: caption, description

For each kind in (image, instance, caption, description):
`data/features/<kind>/index.parquet` is the index (one row per feature vector) and
`data/features/<kind>/vectors-NNNNN.npy` are float16 shards, L2-normalised, row-aligned
with the index (row r of the index is row r of the concatenated shards).
The two modalities are separate DVC stages, so a caption change never re-encodes images.

| kind        | index columns            | encoder              | what is encoded                       |
|-------------|--------------------------|----------------------|---------------------------------------|
| image       | uid, label               | embed.image_encoder  | the whole image                       |
| instance    | uid, label, instance_id  | embed.image_encoder  | the image with all but the mask zeroed|
| caption     | uid, label, instance_id  | embed.text_encoder   | caption text (instance_id -1 = image) |
| description | uid, label               | embed.text_encoder   | description text                      |

Every index records `{"encoder": name, "settings": ...}` in its metadata.
Backends: image `efficientnet_lite0` (ImageNet-pretrained, pooled 1280-d), text
`minilm` (all-MiniLM-L6-v2, 384-d). They are not a joint space like CLIP's.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from stages.annotate import load_annotation_input, read_annotations
from stages.data import decode_images
from stages.io import (PipelineError, atomic_path, decode_image, read_parquet, read_parquet_metadata, save_npy,
                       write_parquet)
from stages.models import EfficientNetLite0, MiniLM, batched
from stages.params import load_params, param, positive, resolve_device

FEATURES = Path("data/features")
KINDS = ("image", "instance", "caption", "description")
IMAGE_ENCODERS = {"efficientnet_lite0": lambda params, device: EfficientNetLite0(
    device, positive(params, "embed.input_size"))}
TEXT_ENCODERS = {"minilm": lambda params, device: MiniLM(device)}


def build_encoder(params, key: str, registry: dict, device):
    name = param(params, key, str)
    if name not in registry:
        raise PipelineError(f"unknown encoder {name!r} (param '{key}'); valid: {', '.join(sorted(registry))}")
    return name, registry[name](params, device)


def write_features(kind: str, index: dict, vectors: np.ndarray, encoder: str, settings: dict,
                   rows_per_shard: int) -> None:
    with atomic_path(FEATURES / kind) as tmp:
        tmp.mkdir()
        for i, start in enumerate(range(0, max(len(vectors), 1), rows_per_shard)):
            save_npy(vectors[start:start + rows_per_shard].astype(np.float16), tmp / f"vectors-{i:05d}.npy")
        write_parquet(index, tmp / "index.parquet", {"features": {"encoder": encoder, "settings": settings,
                                                                  "dim": int(vectors.shape[1])}})


def load_features(kind: str, root=FEATURES):
    """(index table, float32 matrix) for one kind of features."""
    if kind not in KINDS:
        raise PipelineError(f"unknown feature kind {kind!r}; valid: {', '.join(KINDS)}")
    index = read_parquet(Path(root) / kind / "index.parquet")
    shards = sorted((Path(root) / kind).glob("vectors-*.npy"))
    vectors = np.concatenate([np.load(s) for s in shards]).astype(np.float32) if shards else np.zeros((0, 0))
    if len(vectors) != index.num_rows:
        raise PipelineError(f"{root}/{kind}: index has {index.num_rows} rows but shards hold {len(vectors)}; "
                            "re-run `dvc repro embed`")
    return index, vectors


def feature_metadata(kind: str, root=FEATURES) -> dict:
    return read_parquet_metadata(Path(root) / kind / "index.parquet").get("features", {})


def encode_images(encoder, images: torch.Tensor, batch_size: int, desc: str) -> np.ndarray:
    out = [encoder.features(images[sl]).numpy() for sl in batched(len(images), batch_size, desc)]
    return np.concatenate(out) if out else np.zeros((0, 1), np.float32)


def embed_images(params, device, batch_size, rows_per_shard, embed_settings) -> str:
    name, encoder = build_encoder(params, "embed.image_encoder", IMAGE_ENCODERS, device)
    table = load_annotation_input(("uid", "label", "image"))
    uids, labels = table["uid"].to_pylist(), table["label"].to_pylist()
    images = torch.from_numpy(decode_images(table["image"].to_pylist(), uids, channels=3))
    write_features("image", {"uid": uids, "label": labels},
                   encode_images(encoder, images, batch_size, "embed images"), name, embed_settings, rows_per_shard)

    inst = read_annotations("instances", ["uid", "instance_id", "mask"])
    position = {u: i for i, u in enumerate(uids)}
    inst_uids = inst["uid"].to_pylist()
    masks = np.stack([decode_image(b, f"mask of {u}", "L") > 0 for u, b in zip(inst_uids, inst["mask"].to_pylist())]) \
        if inst_uids else np.zeros((0,) + tuple(images.shape[2:]), bool)
    masked = images[[position[u] for u in inst_uids]] * torch.from_numpy(masks)[:, None]
    write_features("instance", {"uid": inst_uids, "label": [labels[position[u]] for u in inst_uids],
                                "instance_id": inst["instance_id"].to_pylist()},
                   encode_images(encoder, masked, batch_size, "embed instances"), name, embed_settings,
                   rows_per_shard)
    return f"{len(uids)} images and {len(inst_uids)} instances with {name}"


def embed_texts(params, device, batch_size, rows_per_shard, embed_settings) -> str:
    name, encoder = build_encoder(params, "embed.text_encoder", TEXT_ENCODERS, device)
    table = load_annotation_input(("uid", "label"))
    label_of = dict(zip(table["uid"].to_pylist(), table["label"].to_pylist()))
    caps = read_annotations("captions", ["uid", "instance_id", "caption"])
    cap_uids = caps["uid"].to_pylist()
    write_features("caption", {"uid": cap_uids, "label": [label_of[u] for u in cap_uids],
                               "instance_id": caps["instance_id"].to_pylist()},
                   encoder.encode(caps["caption"].to_pylist(), batch_size), name, embed_settings, rows_per_shard)
    desc = read_annotations("descriptions", ["uid", "description"])
    desc_uids = desc["uid"].to_pylist()
    write_features("description", {"uid": desc_uids, "label": [label_of[u] for u in desc_uids]},
                   encoder.encode(desc["description"].to_pylist(), batch_size), name, embed_settings,
                   rows_per_shard)
    return f"{len(cap_uids)} captions and {len(desc_uids)} descriptions with {name}"


def main() -> None:
    parser = argparse.ArgumentParser(description="embed images or texts")
    parser.add_argument("--modality", required=True, choices=("image", "text"))
    args = parser.parse_args()
    params = load_params()
    device = resolve_device(params)
    batch_size = positive(params, "embed.batch_size")
    rows_per_shard = positive(params, "embed.rows_per_shard", int, 50000)
    key = "embed.image_encoder" if args.modality == "image" else "embed.text_encoder"
    embed_settings = {k: v for k, v in param(params, "embed", dict).items()
                      if k not in ("image_encoder", "text_encoder")} | {"encoder": param(params, key, str)}
    run = embed_images if args.modality == "image" else embed_texts
    print("embedded " + run(params, device, batch_size, rows_per_shard, embed_settings))


if __name__ == "__main__":
    main()

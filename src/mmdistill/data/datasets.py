"""Loading prepared splits and annotations as tensors for the training stages."""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mmdistill.core.paths import ANNOTATIONS, PREPARED
from mmdistill.core.storage import (
    PipelineError,
    decode_image,
    read_parquet,
    read_parquet_metadata,
)

SPLITS = ("train", "val", "test")


@dataclass
class ImageSet:
    images: torch.Tensor  # uint8, N x C x H x W
    labels: torch.Tensor  # int64, N
    uids: list
    class_names: list
    mean: list
    std: list

    def normalized(self) -> torch.Tensor:
        return normalize(self.images, self.mean, self.std)

    def subset(self, index) -> "ImageSet":
        index = torch.as_tensor(index, dtype=torch.long)
        return ImageSet(self.images[index], self.labels[index], [self.uids[i] for i in index.tolist()],
                        self.class_names, self.mean, self.std)

    def __len__(self) -> int:
        return len(self.labels)


def normalize(images: torch.Tensor, mean, std) -> torch.Tensor:
    mean = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    std = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    return (images.float() / 255.0 - mean) / std


def denormalize(images: torch.Tensor, mean, std) -> torch.Tensor:
    """Back to [0, 1] floats."""
    mean = torch.tensor(mean, dtype=torch.float32, device=images.device).view(1, -1, 1, 1)
    std = torch.tensor(std, dtype=torch.float32, device=images.device).view(1, -1, 1, 1)
    return (images * std + mean).clamp(0, 1)


def dataset_info(root=PREPARED) -> dict:
    meta = read_parquet_metadata(Path(root) / "train")
    if "dataset" not in meta:
        raise PipelineError(f"{root}: prepared data has no 'dataset' metadata; re-run `dvc repro prepare`")
    info = meta["dataset"]
    for key in ("mean", "std"):  # the normalisation every stage applies: finite, std > 0
        values = info.get(key) if isinstance(info, dict) else None
        if not isinstance(values, list) or not values or not all(
                isinstance(v, (int, float)) and math.isfinite(v) and (key == "mean" or v > 0) for v in values):
            raise PipelineError(f"{root}: metadata 'dataset.{key}' is {values!r}, expected finite numbers"
                                f"{' > 0' if key == 'std' else ''}, one per channel; re-run `dvc repro prepare`")
    return info


def resolve_flip(value, key: str, info: dict | None = None) -> bool:
    """A `flip` param (true | false | auto) as a bool: `auto` is the prepared dataset's default (metadata `flip`,
    written by prepare: mmdistill.data.sources.default_flip). `key` names the param in messages."""
    if isinstance(value, bool):
        return value
    if value != "auto":
        raise PipelineError(f"param '{key}' must be auto, true or false, got {value!r}")
    info = dataset_info() if info is None else info
    if not isinstance(info.get("flip"), bool):
        raise PipelineError(f"param '{key}' is auto, but {PREPARED} records no 'flip' default (written by an older "
                            "prepare): re-run `dvc repro prepare`, or set the param to true or false")
    return info["flip"]


def decode_images(blobs, uids, channels: int) -> np.ndarray:
    mode = "L" if channels == 1 else "RGB"
    arrays = [decode_image(b, u, mode) for b, u in zip(blobs, uids)]
    stacked = np.stack(arrays)
    return stacked[:, None] if channels == 1 else stacked.transpose(0, 3, 1, 2)


def load_split(split: str, root=PREPARED) -> ImageSet:
    if split not in SPLITS:
        raise PipelineError(f"unknown split {split!r}; valid: {', '.join(SPLITS)}")
    info = dataset_info(root)
    table = read_parquet(Path(root) / split, ["uid", "label", "image"], {"image": "binary"})
    uids = table["uid"].to_pylist()
    images = decode_images(table["image"].to_pylist(), uids, info["channels"])
    return ImageSet(torch.from_numpy(images), torch.tensor(table["label"].to_pylist(), dtype=torch.long),
                    uids, info["class_names"], info["mean"], info["std"])


def load_foreground_masks(uids, height: int, width: int, path=ANNOTATIONS / "instances.parquet") -> torch.Tensor:
    """Union of each image's instance masks (N x 1 x H x W, float); all ones where an image has none."""
    table = read_parquet(path, ["uid", "mask"])
    masks = {}
    for uid, blob in zip(table["uid"].to_pylist(), table["mask"].to_pylist()):
        m = decode_image(blob, f"mask of {uid}", "L") > 0
        masks[uid] = masks[uid] | m if uid in masks else m
    out = torch.ones(len(uids), 1, height, width)
    for i, uid in enumerate(uids):
        if uid in masks:
            m = masks[uid]
            if m.shape != (height, width):
                raise PipelineError(f"mask of {uid} has shape {m.shape}, image is {(height, width)}")
            out[i, 0] = torch.from_numpy(m.astype(np.float32))
    return out

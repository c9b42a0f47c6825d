"""prepare: ingest a dataset into Parquet shards with train/val/test splits.

Output `data/prepared/{train,val,test}-NNNNN.parquet`, one row per image:

| column     | type          | meaning                                           |
|------------|---------------|---------------------------------------------------|
| uid        | string        | `<dataset>-<source split>-<index>`, stable id     |
| split      | string        | train / val / test                                |
| label      | int64         | class index into metadata `class_names`           |
| class_name | string        |                                                   |
| image      | binary        | PNG bytes (L or RGB)                              |
| width      | int32         |                                                   |
| height     | int32         |                                                   |
| captions   | list<string>  | source captions (empty where the source has none) |

Schema metadata `dataset`: name, source, class_names, channels, height, width,
per-channel mean/std of the train split, split sizes, seed.
The val split is carved from train (seeded, stratified); test is only read by `evaluate`.
"""
from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pyarrow as pa
from tqdm import tqdm

from stages.data import PREPARED
from stages.io import PipelineError, decode_image, png_bytes, write_parquet_shards
from stages.params import load_params, param, positive

FASHION_MNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
                         "Bag", "Ankle boot"]
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp"}


def read_idx(path: Path) -> np.ndarray:
    """Read an idx file (optionally .gz), the format of MNIST and Fashion-MNIST."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
        zero, dtype, ndim = struct.unpack(">HBB", data[:4])
        if zero != 0 or dtype != 0x08:
            raise ValueError("not an unsigned-byte idx file")
        shape = struct.unpack(">" + "I" * ndim, data[4:4 + 4 * ndim])
        return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(shape)
    except (OSError, ValueError, struct.error, EOFError) as exc:
        raise PipelineError(f"{path}: unreadable idx file ({exc})") from exc


def find_idx(root: Path, stem: str) -> Path:
    for name in (stem, stem + ".gz"):
        if (root / name).exists():
            return root / name
    raise PipelineError(f"{root}: no {stem}[.gz]; point prepare.source at a directory with the Fashion-MNIST idx "
                        "files, or install Debian's dataset-fashion-mnist")


def load_fashion_mnist(root: Path):
    """Returns {source split: (images N x H x W x C uint8, labels, captions)} and class names."""
    out = {}
    for split, prefix in (("train", "train"), ("test", "t10k")):
        images = read_idx(find_idx(root, f"{prefix}-images-idx3-ubyte"))
        labels = read_idx(find_idx(root, f"{prefix}-labels-idx1-ubyte")).astype(np.int64)
        if len(images) != len(labels):
            raise PipelineError(f"{root}: {split} has {len(images)} images but {len(labels)} labels")
        out[split] = (images[..., None], labels, [[] for _ in labels])
    return out, FASHION_MNIST_CLASSES


def load_image_folder(root: Path, size: int, channels: int, test_fraction: float, seed: int):
    """`root/<class>/*.png|jpg`, or `root/train/<class>/*` + `root/test/<class>/*`."""
    mode = "L" if channels == 1 else "RGB"
    has_splits = (root / "train").is_dir() and (root / "test").is_dir()
    split_dirs = {"train": root / "train", "test": root / "test"} if has_splits else {"all": root}
    class_names = sorted(d.name for d in split_dirs.get("train", root).iterdir() if d.is_dir())
    if not class_names:
        raise PipelineError(f"{root}: no class folders (expected {root}/<class>/*.png)")
    from PIL import Image
    out = {}
    for split, directory in split_dirs.items():
        files = [(f, label) for label, c in enumerate(class_names) for f in sorted((directory / c).glob("*"))
                 if f.suffix.lower() in IMAGE_SUFFIXES]
        if not files:
            raise PipelineError(f"{directory}: no images with suffix {sorted(IMAGE_SUFFIXES)}")
        images = []
        for f, _ in tqdm(files, desc=f"read {split} images", disable=len(files) < 2000):
            array = decode_image(f.read_bytes(), str(f), mode)
            img = Image.fromarray(array).resize((size, size), Image.BILINEAR)
            images.append(np.asarray(img).reshape(size, size, channels))
        out[split] = (np.stack(images), np.array([lab for _, lab in files], dtype=np.int64), [[] for _ in files])
    if not has_splits:
        images, labels, caps = out.pop("all")
        test_idx = stratified_sample(labels, lambda n: int(round(n * test_fraction)), seed + 1)
        train_idx = np.setdiff1d(np.arange(len(labels)), test_idx)
        out["train"] = (images[train_idx], labels[train_idx], [caps[i] for i in train_idx])
        out["test"] = (images[test_idx], labels[test_idx], [caps[i] for i in test_idx])
    return out, class_names


def stratified_sample(labels: np.ndarray, count, seed: int) -> np.ndarray:
    """Sorted indices of count(n_class) seeded random items per class."""
    rng = np.random.default_rng(seed)
    picked = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        k = min(count(len(idx)), len(idx))
        picked.append(rng.choice(idx, size=k, replace=False))
    return np.sort(np.concatenate(picked))


def to_table(images, labels, captions, uids, split, class_names) -> pa.Table:
    pngs = [png_bytes(img[..., 0] if img.shape[-1] == 1 else img)
            for img in tqdm(images, desc=f"encode {split}", disable=len(images) < 5000)]
    return pa.table({
        "uid": pa.array(uids, pa.string()),
        "split": pa.array([split] * len(uids), pa.string()),
        "label": pa.array(labels, pa.int64()),
        "class_name": pa.array([class_names[i] for i in labels], pa.string()),
        "image": pa.array(pngs, pa.binary()),
        "width": pa.array([images.shape[2]] * len(uids), pa.int32()),
        "height": pa.array([images.shape[1]] * len(uids), pa.int32()),
        "captions": pa.array(captions, pa.list_(pa.string())),
    })


def main() -> None:
    params = load_params()
    seed = param(params, "seed", int)
    name = param(params, "prepare.dataset", str, choices=("fashion_mnist", "image_folder"))
    root = Path(param(params, "prepare.source", str))
    if not root.is_dir():
        raise PipelineError(f"param 'prepare.source': {root} is not a directory")
    val_per_class = param(params, "prepare.val_per_class", int)
    max_train = param(params, "prepare.max_train_per_class", int, 0)
    rows_per_shard = positive(params, "prepare.rows_per_shard")
    if name == "fashion_mnist":
        splits, class_names = load_fashion_mnist(root)
    else:
        splits, class_names = load_image_folder(root, positive(params, "prepare.image_size"),
                                                param(params, "prepare.channels", int, choices=(1, 3)),
                                                param(params, "prepare.test_fraction", float), seed)

    images, labels, captions = splits["train"]
    uids = [f"{name}-train-{i:05d}" for i in range(len(labels))]
    for c in range(len(class_names)):
        n = int((labels == c).sum())
        if n <= val_per_class:
            raise PipelineError(f"class '{class_names[c]}' has {n} train images, not more than "
                                f"prepare.val_per_class={val_per_class}")
    val_idx = stratified_sample(labels, lambda n: val_per_class, seed)
    train_idx = np.setdiff1d(np.arange(len(labels)), val_idx)
    if max_train > 0:
        keep = stratified_sample(labels[train_idx], lambda n: max_train, seed + 2)
        train_idx = train_idx[keep]
    parts = {
        "train": (images[train_idx], labels[train_idx], [captions[i] for i in train_idx], [uids[i] for i in train_idx]),
        "val": (images[val_idx], labels[val_idx], [captions[i] for i in val_idx], [uids[i] for i in val_idx]),
    }
    t_images, t_labels, t_caps = splits["test"]
    parts["test"] = (t_images, t_labels, t_caps, [f"{name}-test-{i:05d}" for i in range(len(t_labels))])

    train_pixels = parts["train"][0].reshape(-1, parts["train"][0].shape[-1]).astype(np.float64) / 255.0
    info = {
        "name": name, "source": str(root), "class_names": class_names, "seed": seed,
        "channels": int(images.shape[-1]), "height": int(images.shape[1]), "width": int(images.shape[2]),
        "mean": [round(float(v), 6) for v in train_pixels.mean(0)],
        "std": [round(float(v), 6) for v in train_pixels.std(0)],
        "sizes": {s: int(len(p[1])) for s, p in parts.items()},
    }
    for split, (imgs, labs, caps, ids) in parts.items():
        for old in PREPARED.glob(f"{split}-*.parquet"):
            old.unlink()
        write_parquet_shards(to_table(imgs, labs, caps, ids, split, class_names), PREPARED, split,
                             rows_per_shard, {"dataset": info})
    print(f"prepared {name}: " + ", ".join(f"{s} {n}" for s, n in info["sizes"].items()))


if __name__ == "__main__":
    main()

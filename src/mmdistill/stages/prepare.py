"""prepare: ingest a dataset into Parquet shards with train/val/test splits.

Output `data/prepared/{train,val,test}-NNNNN.parquet`, one row per image:

| column     | type          | meaning                                           |
|------------|---------------|---------------------------------------------------|
| uid        | string        | `<prefix>-<source split>-<index>`, stable id (*)  |
| split      | string        | train / val / test                                |
| label      | int64         | class index into metadata `class_names`           |
| class_name | string        |                                                   |
| image      | binary        | PNG bytes (L or RGB)                              |
| width      | int32         |                                                   |
| height     | int32         |                                                   |
| captions   | list<string>  | source captions (empty where the source has none) |

(*) prefix: the dataset's name; image_folder: the source folder's name, so two folders give other uids;
karpathy: `<the JSON's dataset name>-<its split>-<index in the JSON>` (e.g. `coco-restval-01234`).

Schema metadata `dataset`: name, source, class_names, channels, height, width,
per-channel mean/std of the train split, split sizes, flip (whether DSA's horizontal flip suits the data:
false for fashion_mnist, the image-text sets made from it and 1-channel image folders, true for natural colour
images, i.e. cifar10, the ImageNet subsets, RGB image folders and karpathy's photos; every `flip: auto` param
follows it, mmdistill.data.sources.default_flip), seed (and `source_classes`, the ImageNet class folders, for the
ImageNet subsets; `resize`, for image_folder and karpathy); the image-text sets also `captions_per_image`
{min, max} and `text` (where the captions come from), scenes `synthetic`: true.
The val split is carved from train (seeded, stratified), except where the source has its own (scenes; karpathy
when its JSON has val images); `max_train_per_class` then caps train. test is only read by `evaluate`.

Datasets (`prepare.dataset`, read from `prepare.source`):
  fashion_mnist   the four idx files (.gz ok)
  image_folder    root/<class>/*.png|jpg, or root/train/<class>/* + root/test/<class>/*; classes in sorted
                  order of the folder names unless `prepare.classes` lists them; names starting with "."
                  are left out; at least 2 classes, no two names equal up to case; each image made
                  square by `prepare.resize` (squash | center_crop | pad), `prepare.image_size` and
                  `prepare.channels` 0 = inferred from the images (mmdistill.data.sources.load_image_folder)
  cifar10         the standard python archive cifar-10-python.tar.gz (the file, its folder, or
                  the extracted cifar-10-batches-py folder); test = its test_batch
  imagenette, imagewoof, imnet_a ... imnet_e, imnet_birds, imnet_fruits, imnet_cats
                  the 10-class ImageNet subsets of the multi-modal paper (class lists of GLaD,
                  IMAGENET_SUBSETS: indices into the sorted 1000 ImageNet class folders),
                  from an ImageNet root with train/<wnid>/ and val/<wnid>/ (val sorted into
                  class folders); test = ImageNet val. Each image: shorter side resized to
                  `prepare.image_size` (the paper: 128 or 256), centre crop, RGB.
Image-text (every row has captions):
  fashion_mnist_captions  the Fashion-MNIST idx files with label captions as MTT-VL Table 7: one caption
                  "This is a {label}" (`prepare.fashion_mnist_captions.captions` 1) or that many captions
                  from varied templates (mmdistill.data.synthetic.LABEL_TEMPLATES)
  scenes          synthetic, from the Fashion-MNIST idx files: `prepare.scenes.{train,val,test}` RGB canvases
                  of `size`^2 with 1..`max_items` tinted items, `captions` captions each describing the
                  composition; train from Fashion-MNIST train items, val/test from disjoint halves of its test
                  items; label = the class of the largest item (mmdistill.data.synthetic)
  karpathy        a Karpathy-split caption JSON (Flickr8K/Flickr30K/COCO: images[] with filename, filepath
                  (COCO), split, sentences[].raw) in `prepare.source` (`prepare.karpathy.json`; "" = the one
                  dataset_*.json there) and its images (`prepare.karpathy.images`, a folder inside the source;
                  "" = the source or its one subfolder holding them); splits from the JSON, restval -> train,
                  no val in the JSON -> carved from train; unlabelled (one class, label 0); images made square
                  as image_folder's (`prepare.image_size`, `prepare.channels`, `prepare.resize`)
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from mmdistill.core.config import load_params, param, positive
from mmdistill.core.paths import PREPARED
from mmdistill.core.storage import PipelineError, atomic_path, check_writable, write_parquet_shards
from mmdistill.data.sources import (
    CHANNELS,
    DATASETS,
    IMAGENET_SUBSETS,
    RESIZE_MODES,
    default_flip,
    load_cifar10,
    load_fashion_mnist,
    load_image_folder,
    load_imagenet_subset,
    load_karpathy,
    stratified_sample,
    to_table,
    uid_prefix,
)
from mmdistill.data.synthetic import LABEL_CAPTIONS_INFO, SCENES_INFO, load_fashion_mnist_captions, make_scenes
from mmdistill.stages import run_stage


def main() -> None:
    params = load_params()
    check_writable(PREPARED)
    seed = param(params, "seed", int)
    name = param(params, "prepare.dataset", str, choices=DATASETS)
    root = Path(param(params, "prepare.source", str))
    if not root.is_dir() and not (name == "cifar10" and root.is_file()):
        raise PipelineError(f"param 'prepare.source': {root} is not a directory")
    val_per_class = param(params, "prepare.val_per_class", int)
    max_train = param(params, "prepare.max_train_per_class", int)
    rows_per_shard = positive(params, "prepare.rows_per_shard")
    source_classes, extra_info, prefix = None, {}, name
    classes = param(params, "prepare.classes", list)
    if classes and name != "image_folder":
        raise PipelineError(f"param 'prepare.classes' applies to image_folder only (prepare.dataset is {name}); "
                            "set it to []")
    if name == "fashion_mnist":
        splits, class_names = load_fashion_mnist(root)
    elif name == "cifar10":
        splits, class_names = load_cifar10(root)
    elif name in IMAGENET_SUBSETS:
        splits, class_names, source_classes = load_imagenet_subset(root, name, positive(params, "prepare.image_size"))
    elif name == "fashion_mnist_captions":
        splits, class_names = load_fashion_mnist_captions(
            root, param(params, "prepare.fashion_mnist_captions.captions", int), seed)
        extra_info = {"text": LABEL_CAPTIONS_INFO}
    elif name == "scenes":
        side, max_items = positive(params, "prepare.scenes.size"), positive(params, "prepare.scenes.max_items")
        splits, class_names, _ = make_scenes(
            root, side, max_items, {s: positive(params, f"prepare.scenes.{s}") for s in ("train", "val", "test")},
            positive(params, "prepare.scenes.captions"), seed)
        extra_info = {"synthetic": True, "text": SCENES_INFO, "max_items": max_items}
    elif name == "karpathy":
        resize = param(params, "prepare.resize", str, choices=RESIZE_MODES)
        splits, class_names, _, _, json_path = load_karpathy(
            root, param(params, "prepare.karpathy.json", str), param(params, "prepare.karpathy.images", str),
            param(params, "prepare.image_size", int), param(params, "prepare.channels", int, choices=CHANNELS),
            resize)
        extra_info = {"resize": resize, "text": f"the captions of {json_path.name}"}
    else:
        resize = param(params, "prepare.resize", str, choices=RESIZE_MODES)
        splits, class_names, _, _ = load_image_folder(
            root, param(params, "prepare.image_size", int), param(params, "prepare.channels", int, choices=CHANNELS),
            param(params, "prepare.test_fraction", float), seed, resize, classes)
        extra_info, prefix = {"resize": resize}, uid_prefix(root)

    # a loader gives (images, labels, captions) per source split, or (..., uids) where it names its rows itself
    parts = {split: part if len(part) == 4 else (*part, [f"{prefix}-{split}-{i:05d}" for i in range(len(part[1]))])
             for split, part in splits.items()}
    images, labels, captions, uids = parts["train"]
    if "val" in parts:                    # the source's own val split
        train_idx = np.arange(len(labels))
    else:
        for c in range(len(class_names)):
            n = int((labels == c).sum())
            if n <= val_per_class:
                raise PipelineError(f"class '{class_names[c]}' has {n} train images, not more than "
                                    f"prepare.val_per_class={val_per_class}")
        val_idx = stratified_sample(labels, lambda n: val_per_class, seed)
        train_idx = np.setdiff1d(np.arange(len(labels)), val_idx)
        parts["val"] = (images[val_idx], labels[val_idx], [captions[i] for i in val_idx], [uids[i] for i in val_idx])
    if max_train > 0:
        keep = stratified_sample(labels[train_idx], lambda n: max_train, seed + 2)
        train_idx = train_idx[keep]
    parts = {
        "train": (images[train_idx], labels[train_idx], [captions[i] for i in train_idx], [uids[i] for i in train_idx]),
        "val": parts["val"], "test": parts["test"],
    }
    counts = [len(c) for part in parts.values() for c in part[2]]
    if any(counts):
        extra_info["captions_per_image"] = {"min": min(counts), "max": max(counts)}

    train_pixels = parts["train"][0].reshape(-1, parts["train"][0].shape[-1]).astype(np.float64) / 255.0
    # a channel constant over the train split gets std 1 in the metadata, so normalising leaves it at 0 (not 0/0 = NaN)
    std = [round(float(v), 6) or 1.0 for v in train_pixels.std(0)]
    info = {
        "name": name, "source": str(root), "class_names": class_names, "seed": seed,
        "channels": int(images.shape[-1]), "height": int(images.shape[1]), "width": int(images.shape[2]),
        "mean": [round(float(v), 6) for v in train_pixels.mean(0)],
        "std": std,
        "sizes": {s: int(len(p[1])) for s, p in parts.items()},
        "flip": default_flip(name, int(images.shape[-1])),
        **({"source_classes": source_classes} if source_classes else {}), **extra_info,
    }
    with atomic_path(PREPARED) as tmp:  # every split into a new folder, swapped in once: a failure changes nothing
        tmp.mkdir()
        for split, (imgs, labs, caps, ids) in parts.items():
            write_parquet_shards(to_table(imgs, labs, caps, ids, split, class_names), tmp, split,
                                 rows_per_shard, {"dataset": info})
    print(f"prepared {name}: " + ", ".join(f"{s} {n}" for s, n in info["sizes"].items()))


if __name__ == "__main__":
    run_stage(main)

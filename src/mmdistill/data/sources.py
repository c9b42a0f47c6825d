"""Ingest a dataset into Parquet shards with train/val/test splits.

The stage, its outputs and their schema: mmdistill.stages.prepare.
"""
from __future__ import annotations

import gzip
import io
import json
import pickle
import re
import struct
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
from tqdm import tqdm

from mmdistill.core.storage import PipelineError, decode_image, image_header, png_bytes

FASHION_MNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
                         "Bag", "Ankle boot"]
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp"}
RESIZE_MODES = ("squash", "center_crop", "pad")
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
# The ImageNet subsets of the multi-modal paper, as defined by GLaD (Cazenavette et al.) and, for ImageNette,
# ImageWoof, Birds, Fruits and Cats, by MTT: (index into the sorted ImageNet-1k class folders, class name).
IMAGENET_SUBSETS = {
    "imagenette": [(0, "tench"), (217, "English springer"), (482, "cassette player"), (491, "chain saw"),
                   (497, "church"), (566, "French horn"), (569, "garbage truck"), (571, "gas pump"),
                   (574, "golf ball"), (701, "parachute")],
    "imagewoof": [(193, "Australian terrier"), (182, "Border terrier"), (258, "Samoyed"), (162, "beagle"),
                  (155, "Shih-Tzu"), (167, "English foxhound"), (159, "Rhodesian ridgeback"), (273, "dingo"),
                  (207, "golden retriever"), (229, "Old English sheepdog")],
    "imnet_a": [(255, "Leonberg"), (376, "proboscis monkey"), (984, "rapeseed"), (364, "three-toed sloth"),
                (500, "cliff dwelling"), (986, "yellow lady's slipper"), (333, "hamster"), (576, "gondola"),
                (148, "killer whale"), (135, "limpkin")],
    "imnet_b": [(129, "spoonbill"), (916, "web site"), (90, "lorikeet"), (275, "African hunting dog"),
                (995, "earthstar"), (874, "trolleybus"), (102, "echidna"), (259, "Pomeranian"), (685, "odometer"),
                (139, "ruddy turnstone")],
    "imnet_c": [(565, "freight car"), (94, "hummingbird"), (554, "fireboat"), (535, "disk brake"),
                (92, "bee eater"), (392, "rock beauty"), (291, "lion"), (136, "European gallinule"),
                (324, "cabbage butterfly"), (11, "goldfinch")],
    "imnet_d": [(9, "ostrich"), (258, "Samoyed"), (13, "junco"), (262, "Brabancon griffon"), (19, "chickadee"),
                (339, "sorrel"), (321, "admiral"), (24, "great grey owl"), (93, "hornbill"), (322, "ringlet")],
    "imnet_e": [(816, "spindle"), (96, "toucan"), (100, "black swan"), (145, "king penguin"),
                (739, "potter's wheel"), (713, "photocopier"), (783, "screw"), (76, "tarantula"),
                (688, "oscilloscope"), (326, "lycaenid")],
    "imnet_birds": [(84, "peacock"), (130, "flamingo"), (88, "macaw"), (144, "pelican"), (145, "king penguin"),
                    (22, "bald eagle"), (96, "toucan"), (9, "ostrich"), (100, "black swan"),
                    (89, "sulphur-crested cockatoo")],
    "imnet_fruits": [(953, "pineapple"), (954, "banana"), (949, "strawberry"), (950, "orange"), (951, "lemon"),
                     (957, "pomegranate"), (952, "fig"), (945, "bell pepper"), (943, "cucumber"),
                     (948, "Granny Smith")],
    "imnet_cats": [(281, "tabby cat"), (282, "tiger cat"), (283, "Persian cat"), (284, "Siamese cat"),
                   (285, "Egyptian cat"), (291, "lion"), (292, "tiger"), (290, "jaguar"), (289, "snow leopard"),
                   (287, "lynx")],
}
# fashion_mnist_captions and scenes: image-text sets made from the Fashion-MNIST idx files (mmdistill.data.synthetic);
# karpathy: a Karpathy-split caption JSON (Flickr8K, Flickr30K, COCO) with its image folder (load_karpathy)
DATASETS = ("fashion_mnist", "image_folder", "cifar10", *IMAGENET_SUBSETS, "fashion_mnist_captions", "scenes",
            "karpathy")
# the JSON's split names -> ours ("restval", the COCO images outside Karpathy's val/test, is train as customary)
KARPATHY_SPLITS = {"train": "train", "restval": "train", "val": "val", "test": "test"}
UNLABELLED = "unlabelled"  # the one class of a dataset without class labels (karpathy): label 0


def default_flip(name: str, channels: int) -> bool:
    """Whether DSA's horizontal flip suits the dataset (recorded by prepare as metadata `flip`; every `flip: auto`
    param follows it). Grey digit and clothing images (fashion_mnist and the sets made from it, fashion_mnist_captions
    and scenes; an image_folder of 1-channel images) no flip; natural colour images (cifar10, the ImageNet subsets,
    karpathy's photos; an image_folder of RGB images) flip. The DC/DSA and DM code bases leave flip out for digits
    only, so they flip Fashion-MNIST: `flip: true` is their form (at the reference DM budget it lowered random and dm
    alike, by about 0.6 points: benchmarks/results/dm_flip.md)."""
    if name in ("fashion_mnist", "fashion_mnist_captions", "scenes"):
        return False
    if name in ("image_folder", "karpathy"):
        return channels == 3
    return True


CHANNELS = (0, 1, 3)  # image_folder: from the data, L or RGB (prepare.channels)


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
        image_file = find_idx(root, f"{prefix}-images-idx3-ubyte")
        label_file = find_idx(root, f"{prefix}-labels-idx1-ubyte")
        images, labels = read_idx(image_file), read_idx(label_file).astype(np.int64)
        for path, array, ndim, what in ((image_file, images, 3, "images are 3 (N x H x W)"),
                                        (label_file, labels, 1, "labels are 1 (N)")):
            if array.ndim != ndim:
                raise PipelineError(f"{path}: an idx file of {array.ndim} dimension(s), but {what}; are the images "
                                    "and labels files swapped?")
        if len(images) != len(labels):
            raise PipelineError(f"{root}: {split} has {len(images)} images but {len(labels)} labels")
        check_labels(labels, len(FASHION_MNIST_CLASSES), label_file)
        out[split] = (images[..., None], labels, [[] for _ in labels])
    return out, FASHION_MNIST_CLASSES


def check_labels(labels: np.ndarray, n_classes: int, where) -> None:
    """Every label in 0..n_classes-1, or an error naming `where` (the file) and the first bad label."""
    bad = np.flatnonzero((labels < 0) | (labels >= n_classes))
    if len(bad):
        raise PipelineError(f"{where}: label {int(labels[bad[0]])} at row {int(bad[0])} is out of range "
                            f"0..{n_classes - 1} ({len(bad)} such label(s))")


def check_class_names(class_names: list[str], where) -> None:
    """At least two classes, no two names equal up to case (they would be one word in captions)."""
    if len(class_names) < 2:
        raise PipelineError(f"{where}: {len(class_names)} class ({', '.join(class_names)}); a classifier needs "
                            "at least 2 classes")
    seen = {}
    for name in class_names:
        other = seen.setdefault(name.casefold(), name)
        if other != name:
            raise PipelineError(f"{where}: class names '{other}' and '{name}' differ only in case; rename one")


def uid_prefix(root: Path) -> str:
    """The source folder's name, characters other than letters, digits, '_' and '.' replaced by '_'."""
    return re.sub(r"[^A-Za-z0-9_.]", "_", Path(root).resolve().name) or "root"


def load_image_folder(root: Path, size: int, channels: int, test_fraction: float, seed: int, resize: str,
                      classes: list[str]):
    """`root/<class>/*.png|jpg`, or `root/train/<class>/*` + `root/test/<class>/*`.

    Classes: the class folders in sorted order of their names (Python string order), folders and files whose
    name starts with "." left out (`.ipynb_checkpoints`); or, when `classes` is not empty, exactly those
    folders in that order (other folders are left out, with a note). Each image is decoded as decode_image
    does (16-bit scaled, transparency on black) and made size x size by `resize`: `squash` (resize both
    sides, the aspect ratio is lost), `center_crop` (shorter side to `size`, then the central square) or
    `pad` (longer side to `size`, centred on black). `size` 0: the most common shorter side (`pad`: longer
    side) of the images, ties to the smaller; `channels` 0: 1 when every image is grey, else 3.
    Returns ({source split: (images, labels, captions)}, class names, size, channels).
    """
    has_splits = (root / "train").is_dir() and (root / "test").is_dir()
    split_dirs = {"train": root / "train", "test": root / "test"} if has_splits else {"all": root}
    class_root = split_dirs.get("train", root)
    folders = sorted(d.name for d in class_root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not folders:
        raise PipelineError(f"{root}: no class folders (expected {root}/<class>/*.png)")
    if classes:
        repeated = sorted(c for c, n in Counter(classes).items() if n > 1)
        missing = [c for c in classes if c not in folders]
        if repeated or missing:
            raise PipelineError("param 'prepare.classes': " + (f"{repeated} listed twice" if repeated else
                                f"no folder {class_root / missing[0]} (class folders: {', '.join(folders)})"))
        left_out = [f for f in folders if f not in classes]
        if left_out:
            print(f"prepare: class folders not in prepare.classes are left out: {', '.join(left_out)}")
    class_names = list(classes) if classes else folders
    check_class_names(class_names, class_root if not classes else "param 'prepare.classes'")
    listing = {}
    for split, directory in split_dirs.items():
        files = [(f, label) for label, c in enumerate(class_names) for f in sorted((directory / c).glob("*"))
                 if f.suffix.lower() in IMAGE_SUFFIXES and not f.name.startswith(".") and f.is_file()]
        if not files:
            raise PipelineError(f"{directory}: no images with suffix {sorted(IMAGE_SUFFIXES)}")
        listing[split] = files
    size, channels = image_geometry([f for files in listing.values() for f, _ in files], size, channels, resize)
    out = {}
    for split, files in listing.items():
        images = read_square_images([f for f, _ in files], size, channels, resize, split)
        out[split] = (images, np.array([lab for _, lab in files], dtype=np.int64), [[] for _ in files])
    if not has_splits:
        images, labels, caps = out.pop("all")
        test_idx = stratified_sample(labels, lambda n: int(round(n * test_fraction)), seed + 1)
        train_idx = np.setdiff1d(np.arange(len(labels)), test_idx)
        out["train"] = (images[train_idx], labels[train_idx], [caps[i] for i in train_idx])
        out["test"] = (images[test_idx], labels[test_idx], [caps[i] for i in test_idx])
    return out, class_names, size, channels


def image_geometry(files, size: int, channels: int, resize: str) -> tuple[int, int]:
    """`size` 0: the most common shorter side (`pad`: longer side) of the image files, ties to the smaller;
    `channels` 0: 1 when every image is grey, else 3. Read from the files' headers only."""
    if not size or not channels:
        headers = [image_header(f) for f in files]
        if not size:
            sides = Counter((max if resize == "pad" else min)(w, h) for _, w, h, _ in headers)
            size = min(sides, key=lambda s: (-sides[s], s))
        if not channels:
            channels = 1 if all(grey for *_, grey in headers) else 3
        print(f"prepare: image_size {size}, channels {channels} (from the images)")
    return size, channels


def read_square_images(files, size: int, channels: int, resize: str, split: str) -> np.ndarray:
    """The image files decoded as decode_image does, each made size x size by `resize`: N x size x size x C."""
    mode = "L" if channels == 1 else "RGB"
    images = []
    for f in tqdm(files, desc=f"read {split} images", disable=len(files) < 2000):
        array = fit_square(decode_image(f.read_bytes(), str(f), mode), size, resize)
        images.append(array.reshape(size, size, channels))
    return np.stack(images)


def fit_square(array: np.ndarray, size: int, resize: str) -> np.ndarray:
    """A size x size image by `resize` (squash | center_crop | pad; see load_image_folder), bilinear."""
    from PIL import Image
    if resize == "center_crop":
        return resize_center_crop(array, size)
    img = Image.fromarray(array)
    if resize == "squash":
        return np.asarray(img.resize((size, size), Image.BILINEAR))
    if resize != "pad":
        raise PipelineError(f"param 'prepare.resize' = {resize!r} is not one of: {', '.join(RESIZE_MODES)}")
    scale = size / max(img.size)
    w, h = max(1, min(size, round(img.width * scale))), max(1, min(size, round(img.height * scale)))
    canvas = Image.new(img.mode, (size, size))
    canvas.paste(img.resize((w, h), Image.BILINEAR), ((size - w) // 2, (size - h) // 2))
    return np.asarray(canvas)


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles only dicts, lists and numpy arrays: a CIFAR batch needs nothing else."""
    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype")}

    def find_class(self, module, name):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


CIFAR10_BATCH_LIMIT = 64 * 2**20  # bytes; a batch of the python archive is about 31 MB


def load_cifar10(source: Path):
    """The python archive: data_batch_1..5 (train) and test_batch, each {data: N x 3072 uint8, labels}."""
    if source.is_dir() and (source / "cifar-10-python.tar.gz").exists():
        source = source / "cifar-10-python.tar.gz"
    if source.is_dir() and (source / "cifar-10-batches-py").is_dir():
        source = source / "cifar-10-batches-py"
    needed = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    files = {}

    def take(name: str, size: int, read) -> None:
        if name in needed and name not in files:
            if size > CIFAR10_BATCH_LIMIT:
                raise PipelineError(f"{source}: {name} is {size} bytes, more than a CIFAR-10 batch "
                                    f"({CIFAR10_BATCH_LIMIT} at most): not the CIFAR-10 python archive")
            files[name] = read()

    if source.is_file():
        try:
            with tarfile.open(source, "r:*") as tar:
                for member in tar:  # streamed: only the six batches are read, each capped
                    if member.isfile():
                        take(Path(member.name).name, member.size, lambda m=member: tar.extractfile(m).read())
                        if len(files) == len(needed):
                            break
        except (tarfile.TarError, OSError, EOFError) as exc:
            raise PipelineError(f"{source}: unreadable CIFAR-10 archive ({exc})") from exc
    else:
        for name in needed:
            if (source / name).is_file():
                take(name, (source / name).stat().st_size, (source / name).read_bytes)
    out = {}
    for split, names in (("train", [f"data_batch_{i}" for i in range(1, 6)]), ("test", ["test_batch"])):
        images, labels = [], []
        for name in names:
            if name not in files:
                raise PipelineError(f"{source}: no {name}; point prepare.source at cifar-10-python.tar.gz")
            try:
                batch = _ArrayUnpickler(io.BytesIO(files[name]), encoding="bytes").load()
                data = np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
                labels.append(np.asarray(batch[b"labels"], dtype=np.int64))
            except (pickle.UnpicklingError, KeyError, ValueError, EOFError, TypeError) as exc:
                raise PipelineError(f"{source}: {name} is not a CIFAR-10 batch ({exc})") from exc
            check_labels(labels[-1], len(CIFAR10_CLASSES), f"{source}: {name}")
            if len(data) != len(labels[-1]):
                raise PipelineError(f"{source}: {name} has {len(data)} images but {len(labels[-1])} labels")
            images.append(data.transpose(0, 2, 3, 1))
        labels = np.concatenate(labels)
        out[split] = (np.concatenate(images), labels, [[] for _ in labels])
    return out, CIFAR10_CLASSES


def resize_center_crop(array: np.ndarray, size: int) -> np.ndarray:
    """Shorter side to `size` (bilinear), then the central size x size crop."""
    from PIL import Image
    img = Image.fromarray(array)
    scale = size / min(img.size)
    w, h = max(size, round(img.width * scale)), max(size, round(img.height * scale))
    img = img.resize((w, h), Image.BILINEAR)
    left, top = (w - size) // 2, (h - size) // 2
    return np.asarray(img.crop((left, top, left + size, top + size)))


def load_imagenet_subset(root: Path, subset: str, size: int):
    """Classes IMAGENET_SUBSETS[subset] of an ImageNet root with train/<wnid>/ and val/<wnid>/."""
    folders = sorted(d.name for d in (root / "train").iterdir() if d.is_dir()) if (root / "train").is_dir() else []
    if len(folders) != 1000:
        raise PipelineError(f"{root}/train: expected the 1000 ImageNet class folders (the subsets index their "
                            f"sorted list), found {len(folders)}")
    classes = [(folders[i], name) for i, name in IMAGENET_SUBSETS[subset]]
    out = {}
    for split, directory in (("train", root / "train"), ("test", root / "val")):
        files = [(f, label) for label, (wnid, _) in enumerate(classes) for f in sorted((directory / wnid).glob("*"))
                 if f.suffix.lower() in IMAGE_SUFFIXES]
        for label, (wnid, name) in enumerate(classes):
            if not any(lab == label for _, lab in files):
                raise PipelineError(f"{directory / wnid}: no images of class '{name}' (ImageNet val must be sorted "
                                    "into class folders val/<wnid>/)")
        images = [resize_center_crop(decode_image(f.read_bytes(), str(f), "RGB"), size)
                  for f, _ in tqdm(files, desc=f"read {subset} {split}", disable=len(files) < 2000)]
        out[split] = (np.stack(images), np.array([lab for _, lab in files], dtype=np.int64), [[] for _ in files])
    return out, [name for _, name in classes], [wnid for wnid, _ in classes]


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


def find_karpathy_json(root: Path, name: str) -> Path:
    """`root/name`, or with `name` "" the one `dataset_*.json` in `root` (else the one `*.json`)."""
    if name:
        path = root / name
        if not path.is_file():
            raise PipelineError(f"param 'prepare.karpathy.json': no file {path}")
        return path
    found = sorted(root.glob("dataset_*.json")) or sorted(root.glob("*.json"))
    if len(found) != 1:
        listed = ", ".join(f.name for f in found) if found else "none"
        raise PipelineError(f"{root}: expected one Karpathy-split JSON (dataset_flickr30k.json, dataset_coco.json, "
                            f"...), found {listed}; name it in prepare.karpathy.json")
    return found[0]


def karpathy_image_dir(root: Path, images: str, first: tuple[str, str]) -> Path:
    """The folder the JSON's file names are relative to: `root/images`, or with `images` "" `root` itself
    or else the one subfolder of `root` that holds the JSON's first image (flickr30k-images/, ...)."""
    if images:
        folder = root / images
        if not folder.is_dir():
            raise PipelineError(f"param 'prepare.karpathy.images': {folder} is not a directory")
        return folder
    filepath, filename = first
    candidates = [root] + sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    holding = [d for d in candidates if (d / filepath / filename).is_file() or (d / filename).is_file()]
    return holding[0] if holding else root


def karpathy_entries(json_path: Path):
    """The JSON's `dataset` name ("" if none) and its images, checked: [(index, JSON split, (filepath,
    filename), captions)] in file order."""
    try:
        data = json.loads(json_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PipelineError(f"{json_path}: unreadable JSON ({exc})") from exc
    images = data.get("images") if isinstance(data, dict) else None
    if not isinstance(images, list) or not images:
        raise PipelineError(f"{json_path}: no 'images' list (a Karpathy-split file is "
                            '{"images": [{"filename", "split", "sentences": [{"raw"}, ...]}, ...]})')
    entries = []
    for i, entry in enumerate(images):
        if not isinstance(entry, dict):
            raise PipelineError(f"{json_path}: images[{i}] is {type(entry).__name__}, not an object")
        filename = entry.get("filename")
        if not isinstance(filename, str) or not filename:
            raise PipelineError(f"{json_path}: images[{i}] has no 'filename'")
        where = f"{json_path}: images[{i}] ({filename})"
        filepath = entry.get("filepath", "")
        if not isinstance(filepath, str):
            raise PipelineError(f"{where}: 'filepath' is {type(filepath).__name__}, not a string")
        split = entry.get("split")
        if split not in KARPATHY_SPLITS:
            raise PipelineError(f"{where}: unknown split {split!r}; valid: {', '.join(KARPATHY_SPLITS)}")
        sentences = entry.get("sentences")
        if not isinstance(sentences, list) or not sentences:
            raise PipelineError(f"{where}: no captions ('sentences' is {sentences!r}); every image needs at "
                                "least one")
        captions = []
        for j, sentence in enumerate(sentences):
            raw = sentence.get("raw") if isinstance(sentence, dict) else sentence
            if not isinstance(raw, str):
                raise PipelineError(f"{where}: caption sentences[{j}].raw is {type(raw).__name__} {raw!r}, "
                                    "not a string")
            if not raw.strip():
                raise PipelineError(f"{where}: caption sentences[{j}].raw is empty")
            captions.append(raw.strip())
        entries.append((i, split, (filepath, filename), captions))
    dataset = data.get("dataset")
    return (dataset if isinstance(dataset, str) else ""), entries


def load_karpathy(root: Path, json_name: str, images: str, size: int, channels: int, resize: str):
    """A Karpathy-split caption file (the standard Flickr8K/Flickr30K/COCO JSON: `images[]` with `filename`,
    optional `filepath` (COCO: train2014/ val2014/), `split`, `sentences[].raw`) and its image folder.

    Every caption of an image (stripped) goes into its `captions`; splits from the JSON, `restval` -> train.
    The images are unlabelled: one class, UNLABELLED, label 0. Each image is decoded and made square as
    load_image_folder does (`size`/`channels` 0 = inferred). An image is looked up as images/filepath/filename,
    then images/filename. Returns ({split: (images, labels, captions, uids)}, class names, size, channels,
    JSON path); uid `<JSON dataset name>-<JSON split>-<index in the JSON>`.
    """
    json_path = find_karpathy_json(root, json_name)
    dataset, entries = karpathy_entries(json_path)
    folder = karpathy_image_dir(root, images, entries[0][2])
    files, seen = [], {}
    for i, split, (filepath, filename), _ in entries:
        tried = [folder / filepath / filename, folder / filename] if filepath else [folder / filename]
        path = next((t for t in tried if t.is_file()), None)
        if path is None:
            raise PipelineError(f"{json_path}: images[{i}] ({filename}): image missing from {folder} (tried "
                                f"{', '.join(map(str, tried))})")
        if path in seen:
            raise PipelineError(f"{json_path}: images[{i}] and images[{seen[path]}] are both {path}")
        seen[path] = i
        files.append(path)
    missing = [s for s in ("train", "test") if not any(KARPATHY_SPLITS[e[1]] == s for e in entries)]
    if missing:
        raise PipelineError(f"{json_path}: no {' and no '.join(missing)} images (split values: "
                            f"{', '.join(sorted({e[1] for e in entries}))})")
    prefix = re.sub(r"[^A-Za-z0-9_.]", "_", dataset) if dataset else uid_prefix(json_path.with_suffix(""))
    size, channels = image_geometry(files, size, channels, resize)
    out = {}
    for split in ("train", "val", "test"):
        rows = [k for k, e in enumerate(entries) if KARPATHY_SPLITS[e[1]] == split]
        if not rows:
            continue   # no val: prepare carves it from train
        images_ = read_square_images([files[k] for k in rows], size, channels, resize, split)
        out[split] = (images_, np.zeros(len(rows), dtype=np.int64), [entries[k][3] for k in rows],
                      [f"{prefix}-{entries[k][1]}-{entries[k][0]:05d}" for k in rows])
    return out, [UNLABELLED], size, channels, json_path

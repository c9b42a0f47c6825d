from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mmdistill.core.storage import PipelineError, read_parquet
from mmdistill.data.datasets import dataset_info, load_split
from tests.conftest import run_stage, set_params


def test_fashion_mnist_splits(project):
    run_stage("prepare")
    info = dataset_info()
    assert info["sizes"] == {"train": 100, "val": 20, "test": 50}
    assert (info["channels"], info["height"], info["width"]) == (1, 28, 28)
    tables = {s: read_parquet(f"data/prepared/{s}") for s in ("train", "val", "test")}
    uids = [set(t["uid"].to_pylist()) for t in tables.values()]
    assert not (uids[0] & uids[1]) and not (uids[0] & uids[2])
    assert np.bincount(tables["val"]["label"].to_numpy()).tolist() == [2] * 10
    assert set(tables["train"].column_names) >= {"uid", "split", "label", "class_name", "image", "width",
                                                  "height", "captions"}
    train = load_split("train")
    assert train.images.shape == (100, 1, 28, 28) and train.images.dtype.is_floating_point is False


def test_same_seed_same_bytes_other_seed_other_split(project):
    run_stage("prepare")
    first = (project / "data/prepared/val-00000.parquet").read_bytes()
    run_stage("prepare")
    assert (project / "data/prepared/val-00000.parquet").read_bytes() == first
    set_params(project, seed=1)
    run_stage("prepare")
    assert (project / "data/prepared/val-00000.parquet").read_bytes() != first


def test_max_train_per_class(project):
    set_params(project, **{"prepare.max_train_per_class": 3})
    run_stage("prepare")
    assert dataset_info()["sizes"]["train"] == 30


def test_unknown_dataset_lists_valid(project):
    set_params(project, **{"prepare.dataset": "cifar7"})
    with pytest.raises(PipelineError, match="fashion_mnist, image_folder"):
        run_stage("prepare")


def test_missing_source_files(project, tmp_path):
    set_params(project, **{"prepare.source": str(tmp_path)})
    with pytest.raises(PipelineError, match="train-images-idx3-ubyte"):
        run_stage("prepare")


def make_folder(root, per_class=6):
    rng = np.random.default_rng(0)
    for c in ("cat", "dog"):
        (root / c).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)).save(root / c / f"{i}.png")


def test_image_folder(project, tmp_path):
    make_folder(tmp_path / "imgs")
    set_params(project, **{"prepare.dataset": "image_folder", "prepare.source": str(tmp_path / "imgs"),
                           "prepare.val_per_class": 1, "prepare.image_size": 16, "prepare.test_fraction": 0.34})
    run_stage("prepare")
    info = dataset_info()
    assert info["class_names"] == ["cat", "dog"] and (info["channels"], info["height"]) == (3, 16)
    assert info["sizes"] == {"train": 6, "val": 2, "test": 4}


def test_image_folder_corrupt_image_named_and_nothing_written(project, tmp_path):
    make_folder(tmp_path / "imgs")
    (tmp_path / "imgs" / "dog" / "broken.png").write_bytes(b"\x89PNG garbage")
    set_params(project, **{"prepare.dataset": "image_folder", "prepare.source": str(tmp_path / "imgs"),
                           "prepare.val_per_class": 1})
    with pytest.raises(PipelineError, match="broken.png"):
        run_stage("prepare")
    assert not (project / "data/prepared").exists()


def make_cifar_archive(path, per_class_train=3, per_class_test=2):
    """A tiny cifar-10-python.tar.gz: 5 train batches + test_batch; pixel value encodes the class."""
    import io
    import pickle
    import tarfile

    def batch(n, offset):
        labels = [c for c in range(10) for _ in range(n)]
        data = np.array([[c * 20 + offset] * 3072 for c in labels], dtype=np.uint8)
        return pickle.dumps({b"data": data, b"labels": labels, b"batch_label": b"x"})

    with tarfile.open(path, "w:gz") as tar:
        members = {f"data_batch_{i}": batch(per_class_train, i) for i in range(1, 6)}
        members["test_batch"] = batch(per_class_test, 0)
        for name, blob in members.items():
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))


def test_cifar10_from_its_python_archive(project, tmp_path):
    make_cifar_archive(tmp_path / "cifar-10-python.tar.gz")
    set_params(project, **{"prepare.dataset": "cifar10", "prepare.source": str(tmp_path), "prepare.val_per_class": 2})
    run_stage("prepare")
    info = dataset_info()
    assert info["class_names"][0] == "airplane" and (info["channels"], info["height"], info["width"]) == (3, 32, 32)
    assert info["sizes"] == {"train": 130, "val": 20, "test": 20}
    test = load_split("test")
    assert (test.images[:, :, 0, 0].float().mean(1) // 20).long().tolist() == test.labels.tolist()


def test_cifar10_refuses_pickles_that_are_not_arrays(project, tmp_path):
    import pickle
    import tarfile
    blob = tmp_path / "data_batch_1"
    blob.write_bytes(pickle.dumps({b"data": Path("x"), b"labels": [0]}))
    with tarfile.open(tmp_path / "cifar-10-python.tar.gz", "w:gz") as tar:
        tar.add(blob, "cifar-10-batches-py/data_batch_1")
    set_params(project, **{"prepare.dataset": "cifar10", "prepare.source": str(tmp_path / "cifar-10-python.tar.gz")})
    with pytest.raises(PipelineError, match="data_batch_1 is not a CIFAR-10 batch.*refusing to load"):
        run_stage("prepare")


def make_imagenet(root, classes=1000, per_class=4, val_per_class=2, with_images=range(1000)):
    """train/ and val/ with `classes` wnid folders n00000000...; images only in `with_images` classes."""
    for split, n in (("train", per_class), ("val", val_per_class)):
        for c in range(classes):
            d = root / split / f"n{c:08d}"
            d.mkdir(parents=True)
            if c in with_images:
                for i in range(n):  # a 40x24 image of the class colour with 4 px red bands at the sides
                    img = np.full((24, 40, 3), c % 256, dtype=np.uint8)
                    img[:, :4] = img[:, -4:] = (255, 0, 0)
                    Image.fromarray(img).save(d / f"{c}_{i}.JPEG", quality=95)


def test_imagenet_subset_classes_resize_and_crop(project, tmp_path):
    from mmdistill.data.sources import IMAGENET_SUBSETS
    subset = IMAGENET_SUBSETS["imagewoof"]
    make_imagenet(tmp_path / "imagenet", with_images={i for i, _ in subset})
    set_params(project, **{"prepare.dataset": "imagewoof", "prepare.source": str(tmp_path / "imagenet"),
                           "prepare.val_per_class": 1, "prepare.image_size": 16})
    run_stage("prepare")
    info = dataset_info()
    assert info["class_names"] == [name for _, name in subset]
    assert info["source_classes"] == [f"n{i:08d}" for i, _ in subset]
    assert (info["channels"], info["height"], info["width"]) == (3, 16, 16)
    assert info["sizes"] == {"train": 30, "val": 10, "test": 20}
    train = load_split("train")
    expected = torch.tensor([subset[c][0] % 256 for c in train.labels.tolist()], dtype=torch.int32).view(-1, 1, 1)
    green = train.images[:, 1].int()  # 40x24 -> 27x16 -> centre 16x16: the red bands (green 0) are cropped away
    assert (green - expected).abs().max() <= 4                      # JPEG rounding


def test_imagenet_subset_needs_the_full_class_list(project, tmp_path):
    make_imagenet(tmp_path / "imagenet", classes=12, with_images=())
    set_params(project, **{"prepare.dataset": "imnet_a", "prepare.source": str(tmp_path / "imagenet")})
    with pytest.raises(PipelineError, match="expected the 1000 ImageNet class folders.*found 12"):
        run_stage("prepare")


def test_imagenet_val_must_be_in_class_folders(project, tmp_path):
    from mmdistill.data.sources import IMAGENET_SUBSETS
    make_imagenet(tmp_path / "imagenet", val_per_class=0, with_images={i for i, _ in IMAGENET_SUBSETS["imnet_cats"]})
    set_params(project, **{"prepare.dataset": "imnet_cats", "prepare.source": str(tmp_path / "imagenet"),
                           "prepare.val_per_class": 1, "prepare.image_size": 16})
    with pytest.raises(PipelineError, match="no images of class 'tabby cat'.*val/<wnid>"):
        run_stage("prepare")

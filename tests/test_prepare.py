import numpy as np
import pytest
from PIL import Image

from stages import prepare
from stages.data import dataset_info, load_split
from stages.io import PipelineError, read_parquet
from tests.conftest import run_stage, set_params


def test_fashion_mnist_splits(project):
    run_stage(prepare)
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
    run_stage(prepare)
    first = (project / "data/prepared/val-00000.parquet").read_bytes()
    run_stage(prepare)
    assert (project / "data/prepared/val-00000.parquet").read_bytes() == first
    set_params(project, seed=1)
    run_stage(prepare)
    assert (project / "data/prepared/val-00000.parquet").read_bytes() != first


def test_max_train_per_class(project):
    set_params(project, **{"prepare.max_train_per_class": 3})
    run_stage(prepare)
    assert dataset_info()["sizes"]["train"] == 30


def test_unknown_dataset_lists_valid(project):
    set_params(project, **{"prepare.dataset": "cifar7"})
    with pytest.raises(PipelineError, match="fashion_mnist, image_folder"):
        run_stage(prepare)


def test_missing_source_files(project, tmp_path):
    set_params(project, **{"prepare.source": str(tmp_path)})
    with pytest.raises(PipelineError, match="train-images-idx3-ubyte"):
        run_stage(prepare)


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
    run_stage(prepare)
    info = dataset_info()
    assert info["class_names"] == ["cat", "dog"] and (info["channels"], info["height"]) == (3, 16)
    assert info["sizes"] == {"train": 6, "val": 2, "test": 4}


def test_image_folder_corrupt_image_named_and_nothing_written(project, tmp_path):
    make_folder(tmp_path / "imgs")
    (tmp_path / "imgs" / "dog" / "broken.png").write_bytes(b"\x89PNG garbage")
    set_params(project, **{"prepare.dataset": "image_folder", "prepare.source": str(tmp_path / "imgs"),
                           "prepare.val_per_class": 1})
    with pytest.raises(PipelineError, match="broken.png"):
        run_stage(prepare)
    assert not (project / "data/prepared").exists()

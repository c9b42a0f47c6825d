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


def test_cifar10_reads_only_its_batches_and_caps_their_size(project, tmp_path):
    """issue 14 item 18: the archive is streamed, only the six batches are read, each at most
    CIFAR10_BATCH_LIMIT bytes (a 64 MiB member named data_batch_1 is refused before it is read)."""
    import tarfile

    from mmdistill.data.sources import CIFAR10_BATCH_LIMIT
    big = tmp_path / "data_batch_1"
    with open(big, "wb") as f:
        f.truncate(CIFAR10_BATCH_LIMIT + 1)
    with tarfile.open(tmp_path / "cifar-10-python.tar", "w") as tar:
        tar.add(big, "cifar-10-batches-py/data_batch_1")
    set_params(project, **{"prepare.dataset": "cifar10", "prepare.source": str(tmp_path / "cifar-10-python.tar")})
    with pytest.raises(PipelineError, match=r"data_batch_1 is 67108865 bytes, more than a CIFAR-10 batch"):
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


# ---- bad input never passes silently, and a failed run changes nothing (issue 14, item 13) ----------------

def snapshot(root) -> dict:
    return {p.relative_to(root): p.read_bytes() for p in sorted(Path(root).rglob("*")) if p.is_file()}


def fashion_copy(fashion_dir, dest) -> Path:
    import shutil
    shutil.copytree(fashion_dir, dest)
    return dest


def test_fashion_mnist_uids_unchanged(project):
    set_params(project, **{"prepare.dataset": "fashion_mnist"})
    run_stage("prepare")
    assert read_parquet("data/prepared/test")["uid"].to_pylist()[:2] == ["fashion_mnist-test-00000",
                                                                         "fashion_mnist-test-00001"]
    assert all(u.startswith("fashion_mnist-train-") for u in read_parquet("data/prepared/train")["uid"].to_pylist())


def test_label_out_of_range_names_file_and_keeps_previous_output(project, fashion_dir, tmp_path):
    from tests.conftest import write_idx
    run_stage("prepare")
    before = snapshot(project / "data")
    source = fashion_copy(fashion_dir, tmp_path / "fashion")
    write_idx(source / "t10k-labels-idx1-ubyte.gz", np.array([0, 1, 10] + [2] * 47))
    set_params(project, **{"prepare.source": str(source)})
    with pytest.raises(PipelineError, match=r"t10k-labels-idx1-ubyte.gz.*label 10.*0\.\.9"):
        run_stage("prepare")
    assert snapshot(project / "data") == before


def test_swapped_images_and_labels_files(project, fashion_dir, tmp_path):
    source = fashion_copy(fashion_dir, tmp_path / "fashion")
    images, labels = source / "train-images-idx3-ubyte.gz", source / "train-labels-idx1-ubyte.gz"
    images.rename(tmp_path / "x")
    labels.rename(images)
    (tmp_path / "x").rename(labels)
    set_params(project, **{"prepare.source": str(source)})
    with pytest.raises(PipelineError, match=r"train-images-idx3-ubyte.gz: .*1 dimension.*images are 3"):
        run_stage("prepare")
    assert not (project / "data").exists()


def test_cifar10_label_out_of_range_names_batch(project, tmp_path):
    import io
    import pickle
    import tarfile
    make_cifar_archive(tmp_path / "ok.tar.gz")
    with tarfile.open(tmp_path / "ok.tar.gz") as src, tarfile.open(tmp_path / "cifar-10-python.tar.gz", "w:gz") as dst:
        for member in src.getmembers():
            blob = src.extractfile(member).read()
            if member.name.endswith("data_batch_3"):
                batch = pickle.loads(blob)
                batch[b"labels"][4] = -1
                blob = pickle.dumps(batch)
                member.size = len(blob)
            dst.addfile(member, io.BytesIO(blob))
    set_params(project, **{"prepare.dataset": "cifar10", "prepare.source": str(tmp_path)})
    with pytest.raises(PipelineError, match=r"data_batch_3.*label -1"):
        run_stage("prepare")


def folder_params(root, **extra):
    return {"prepare.dataset": "image_folder", "prepare.source": str(root), "prepare.val_per_class": 1,
            "prepare.image_size": 16, "prepare.test_fraction": 0.34, **extra}


def test_image_folder_skips_hidden_folders_and_files(project, tmp_path):
    make_folder(tmp_path / "imgs")
    make_folder(tmp_path / "ckpt")
    (tmp_path / "ckpt" / "cat").rename(tmp_path / "imgs" / ".ipynb_checkpoints")
    (tmp_path / "imgs" / "dog" / "._0.png").write_bytes(b"AppleDouble junk")
    set_params(project, **folder_params(tmp_path / "imgs"))
    run_stage("prepare")
    info = dataset_info()
    assert info["class_names"] == ["cat", "dog"] and info["sizes"] == {"train": 6, "val": 2, "test": 4}


def write_class_images(root, arrays_by_class: dict, **save):
    for c, arrays in arrays_by_class.items():
        (root / c).mkdir(parents=True)
        for i, a in enumerate(arrays):
            Image.fromarray(a).save(root / c / f"{i}.png", **save)


def test_image_folder_16_bit_png_is_scaled(project, tmp_path):
    levels = {"dark": 0x2020, "light": 0xC0C0}  # 16-bit grey levels; 8 bits: 0x20 = 32 and 0xC0 = 192
    write_class_images(tmp_path / "imgs", {c: [np.full((8, 8), v, np.uint16)] * 4 for c, v in levels.items()})
    set_params(project, **folder_params(tmp_path / "imgs", **{"prepare.image_size": 8, "prepare.channels": 1,
                                                              "prepare.test_fraction": 0.25}))
    run_stage("prepare")
    train = load_split("train")
    expected = torch.tensor([32, 192])[train.labels]
    assert (train.images.flatten(1).float().mean(1) == expected).all()


def test_image_folder_transparent_rgba_on_black(project, tmp_path):
    clear = np.zeros((8, 8, 4), np.uint8)
    clear[..., :3] = 255                       # white, fully transparent: black on the black background
    half_red = np.zeros((8, 8, 4), np.uint8)
    half_red[..., 0], half_red[..., 3] = 255, 128   # red at alpha 128/255 -> (128, 0, 0)
    write_class_images(tmp_path / "imgs", {"clear": [clear] * 4, "red": [half_red] * 4})
    set_params(project, **folder_params(tmp_path / "imgs", **{"prepare.image_size": 8, "prepare.channels": 3,
                                                              "prepare.test_fraction": 0.25}))
    run_stage("prepare")
    train = load_split("train")
    pixel = train.images[:, :, 0, 0]
    assert pixel[train.labels == 0].eq(0).all()
    assert (pixel[train.labels == 1] == torch.tensor([128, 0, 0], dtype=torch.uint8)).all()


def test_a_constant_channel_normalises_to_zero_not_nan(project, tmp_path):
    """issue 14 item 11: red-only images have constant green and blue channels (std 0); their std is recorded as
    1 so that normalising gives 0 there, not 0/0 = NaN in every downstream tensor."""
    rng = np.random.default_rng(0)
    red = [np.dstack([rng.integers(0, 255, (8, 8), dtype=np.uint8)] + [np.zeros((8, 8), np.uint8)] * 2)
           for _ in range(8)]
    write_class_images(tmp_path / "imgs", {"a": red[:4], "b": red[4:]})
    set_params(project, **folder_params(tmp_path / "imgs", **{"prepare.image_size": 8, "prepare.channels": 3,
                                                              "prepare.test_fraction": 0.25}))
    run_stage("prepare")
    assert dataset_info()["std"][1:] == [1.0, 1.0] and dataset_info()["std"][0] > 0
    normalized = load_split("train").normalized()
    assert torch.isfinite(normalized).all() and normalized[:, 1:].eq(0).all()


def test_image_folder_single_class_is_an_error(project, tmp_path):
    make_folder(tmp_path / "imgs")
    import shutil
    shutil.rmtree(tmp_path / "imgs" / "dog")
    set_params(project, **folder_params(tmp_path / "imgs"))
    with pytest.raises(PipelineError, match=r"imgs.*1 class \(cat\).*at least 2"):
        run_stage("prepare")
    assert not (project / "data").exists()


def test_image_folder_class_names_equal_up_to_case(project, tmp_path):
    make_folder(tmp_path / "imgs")
    (tmp_path / "imgs" / "dog").rename(tmp_path / "imgs" / "Cat")
    set_params(project, **folder_params(tmp_path / "imgs"))
    with pytest.raises(PipelineError, match=r"'Cat' and 'cat'.*differ only in case"):
        run_stage("prepare")


def bomb_png(width=20000, height=20000) -> bytes:
    """A PNG whose header claims width x height 8-bit grey pixels (more than PIL's decompression-bomb limit)."""
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def test_image_folder_decompression_bomb_names_file(project, tmp_path):
    make_folder(tmp_path / "imgs")
    (tmp_path / "imgs" / "dog" / "bomb.png").write_bytes(bomb_png())
    set_params(project, **folder_params(tmp_path / "imgs"))
    with pytest.raises(PipelineError, match=r"dog/bomb.png.*decompression bomb"):
        run_stage("prepare")
    assert not (project / "data").exists()


# ---- image_folder: aspect ratio, inferred geometry, uids, class order (issue 14, item 22) -------------------

def three_band_image() -> np.ndarray:
    """8 x 24 RGB: red | green | blue thirds (8 x 8 each)."""
    img = np.zeros((8, 24, 3), np.uint8)
    for band in range(3):
        img[:, band * 8:(band + 1) * 8, band] = 255
    return img


@pytest.mark.parametrize("resize", ["center_crop", "pad", "squash"])
def test_image_folder_resize_modes(project, tmp_path, resize):
    write_class_images(tmp_path / "imgs", {c: [three_band_image()] * 4 for c in ("a", "b")})
    set_params(project, **folder_params(tmp_path / "imgs", **{"prepare.image_size": 8, "prepare.channels": 3,
                                                              "prepare.test_fraction": 0.25,
                                                              "prepare.resize": resize}))
    run_stage("prepare")
    img = load_split("train").images[0].permute(1, 2, 0).int()
    if resize == "center_crop":                # the green middle third, scaled 1:1
        assert (img == torch.tensor([0, 255, 0])).all()
    elif resize == "pad":                      # 24 -> 8 wide, 8 -> 3 high (rows 2..4), black above and below
        assert img[:2].eq(0).all() and img[5:].eq(0).all()
        assert img[3, 0, 0] > 200 and img[3, 4, 1] > 200 and img[3, 7, 2] > 200
    else:                                      # squashed: all three bands side by side in every row
        assert img[:, 0, 0].min() > 200 and img[:, 4, 1].min() > 200 and img[:, 7, 2].min() > 200


def test_image_folder_default_resize_is_center_crop():
    import yaml

    from tests.conftest import REPO
    assert yaml.safe_load((REPO / "params.yaml").read_text())["prepare"]["resize"] == "center_crop"


def test_image_folder_size_and_channels_inferred_when_0(project, tmp_path):
    rng = np.random.default_rng(0)
    write_class_images(tmp_path / "digits", {c: [rng.integers(0, 255, (12, 14), dtype=np.uint8) for _ in range(4)]
                                             for c in ("0", "1")})
    set_params(project, **folder_params(tmp_path / "digits", **{"prepare.image_size": 0, "prepare.channels": 0,
                                                                "prepare.test_fraction": 0.25}))
    run_stage("prepare")
    info = dataset_info()
    assert (info["channels"], info["height"], info["width"]) == (1, 12, 12)
    set_params(project, **{"prepare.resize": "pad"})
    run_stage("prepare")
    assert (dataset_info()["height"], dataset_info()["channels"]) == (14, 1)
    set_params(project, **{"prepare.image_size": 10, "prepare.channels": 3})   # explicit values still win
    run_stage("prepare")
    assert (dataset_info()["channels"], dataset_info()["height"]) == (3, 10)


def test_image_folder_uids_carry_the_folder_name(project, tmp_path):
    make_folder(tmp_path / "photos")
    make_folder(tmp_path / "tiles")
    uids = {}
    for folder in ("photos", "tiles"):
        set_params(project, **folder_params(tmp_path / folder))
        run_stage("prepare")
        uids[folder] = read_parquet("data/prepared/train")["uid"].to_pylist()
    assert all(u.startswith("photos-train-") for u in uids["photos"])
    assert all(u.startswith("tiles-train-") for u in uids["tiles"])


def test_image_folder_explicit_class_list(project, tmp_path):
    make_folder(tmp_path / "imgs")
    (tmp_path / "imgs" / "bird").mkdir()
    set_params(project, **folder_params(tmp_path / "imgs", **{"prepare.classes": ["dog", "cat"]}))
    run_stage("prepare")                        # bird (no images) is left out: it is not listed
    assert dataset_info()["class_names"] == ["dog", "cat"]
    train = read_parquet("data/prepared/train")
    assert {(lab, name) for lab, name in zip(train["label"].to_pylist(), train["class_name"].to_pylist())} == \
        {(0, "dog"), (1, "cat")}
    set_params(project, **{"prepare.classes": ["dog", "cow"]})
    with pytest.raises(PipelineError, match=r"prepare.classes.*no folder .*imgs/cow"):
        run_stage("prepare")
    set_params(project, **{"prepare.dataset": "fashion_mnist"})
    with pytest.raises(PipelineError, match="prepare.classes.*image_folder only"):
        run_stage("prepare")

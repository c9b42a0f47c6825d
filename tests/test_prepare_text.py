"""prepare for image-text data: Karpathy-split JSON sources (Flickr and COCO shapes), fashion_mnist_captions and
the synthetic scenes set; bad Karpathy input is named."""
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mmdistill.core.storage import PipelineError, read_parquet
from mmdistill.data.datasets import dataset_info, load_split
from tests.conftest import run_stage, set_params

SPLITS = ("train", "val", "test")


def tables() -> dict:
    return {s: read_parquet(f"data/prepared/{s}") for s in SPLITS}


# ---- Karpathy-split JSON --------------------------------------------------------------------------------------

def sentences(i: int, n: int = 5) -> list:
    return [{"raw": f"image {i} caption {j} ", "tokens": ["image", str(i)], "sentid": i * 10 + j} for j in range(n)]


def write_image(path: Path, i: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(i)
    h, w = 20 + i % 3 * 4, 24
    Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(path)


def flickr_layout(root: Path, splits=("train",) * 6 + ("val",) * 2 + ("test",) * 3, name="flickr8k") -> Path:
    """root/dataset_<name>.json + root/<name>-images/<i>.jpg (images in a subfolder, as Flickr30K unpacks)."""
    images = []
    for i, split in enumerate(splits):
        filename = f"{1000 + i}_photo.jpg"
        write_image(root / f"{name}-images" / filename, i)
        images.append({"filename": filename, "imgid": i, "split": split, "sentences": sentences(i),
                       "sentids": list(range(i * 10, i * 10 + 5))})
    (root / f"dataset_{name}.json").write_text(json.dumps({"images": images, "dataset": name}))
    return root


def coco_layout(root: Path) -> Path:
    """root/dataset_coco.json with filepath train2014/ val2014/ and a restval split; 4..6 captions an image."""
    splits = ["train", "train", "restval", "restval", "val", "val", "test", "test", "test"]
    images = []
    for i, split in enumerate(splits):
        filepath = "train2014" if split == "train" else "val2014"
        filename = f"COCO_{filepath}_{i:012d}.jpg"
        write_image(root / filepath / filename, i)
        images.append({"filepath": filepath, "filename": filename, "cocoid": 500 + i, "imgid": i, "split": split,
                       "sentences": sentences(i, 4 + i % 3)})
    (root / "dataset_coco.json").write_text(json.dumps({"images": images, "dataset": "coco"}))
    return root


def karpathy_params(root: Path, **extra) -> dict:
    return {"prepare.dataset": "karpathy", "prepare.source": str(root), "prepare.image_size": 16,
            "prepare.channels": 3, **extra}


def test_karpathy_flickr_shape(project, tmp_path):
    source = flickr_layout(tmp_path / "flickr")
    set_params(project, **karpathy_params(source))
    run_stage("prepare")
    info = dataset_info()
    assert info["sizes"] == {"train": 6, "val": 2, "test": 3}
    assert info["class_names"] == ["unlabelled"] and (info["channels"], info["height"], info["width"]) == (3, 16, 16)
    assert info["captions_per_image"] == {"min": 5, "max": 5} and "dataset_flickr8k.json" in info["text"]
    t = tables()
    assert t["val"]["uid"].to_pylist() == ["flickr8k-val-00006", "flickr8k-val-00007"]
    assert t["test"]["captions"].to_pylist()[0] == [f"image 8 caption {j}" for j in range(5)]   # raw, stripped
    for split, table in t.items():
        for uid, caps in zip(table["uid"].to_pylist(), table["captions"].to_pylist()):
            assert caps[0].startswith(f"image {int(uid.rsplit('-', 1)[1])} ")    # each image keeps its own captions
    assert set(t["train"]["label"].to_pylist()) == {0}
    assert load_split("test").images.shape == (3, 3, 16, 16)


def test_karpathy_coco_shape_restval_is_train(project, tmp_path):
    source = coco_layout(tmp_path / "coco")
    set_params(project, **karpathy_params(source, **{"prepare.image_size": 0, "prepare.channels": 0}))
    run_stage("prepare")
    info = dataset_info()
    assert info["sizes"] == {"train": 4, "val": 2, "test": 3}
    assert (info["channels"], info["height"]) == (3, 24)       # inferred: the most common shorter side (20, 24, 24)
    assert info["captions_per_image"] == {"min": 4, "max": 6}
    train = tables()["train"]
    assert train["uid"].to_pylist() == ["coco-train-00000", "coco-train-00001", "coco-restval-00002",
                                        "coco-restval-00003"]
    assert [len(c) for c in train["captions"].to_pylist()] == [4, 5, 6, 4]


def test_karpathy_without_val_carves_it_from_train_and_caps_train(project, tmp_path):
    source = flickr_layout(tmp_path / "flickr", splits=("train",) * 8 + ("test",) * 2)
    set_params(project, **karpathy_params(source, **{"prepare.val_per_class": 3,
                                                     "prepare.max_train_per_class": 4}))
    run_stage("prepare")
    assert dataset_info()["sizes"] == {"train": 4, "val": 3, "test": 2}
    uids = [set(t["uid"].to_pylist()) for t in tables().values()]
    assert not (uids[0] & uids[1])


def test_karpathy_named_json_and_image_folder(project, tmp_path):
    source = flickr_layout(tmp_path / "flickr")
    (source / "dataset_flickr8k.json").rename(source / "captions.json")
    (source / "other.json").write_text("{}")
    set_params(project, **karpathy_params(source))
    with pytest.raises(PipelineError, match=r"expected one Karpathy-split JSON.*captions.json, other.json"):
        run_stage("prepare")
    set_params(project, **{"prepare.karpathy.json": "captions.json", "prepare.karpathy.images": "flickr8k-images"})
    run_stage("prepare")
    assert dataset_info()["sizes"]["test"] == 3
    set_params(project, **{"prepare.karpathy.images": "nowhere"})
    with pytest.raises(PipelineError, match=r"prepare.karpathy.images.*nowhere is not a directory"):
        run_stage("prepare")


def edit_json(source: Path, change) -> Path:
    path = source / "dataset_flickr8k.json"
    data = json.loads(path.read_text())
    change(data["images"])
    path.write_text(json.dumps(data))
    return path


@pytest.mark.parametrize("change, message", [
    (lambda images: images[3].update(filename="9999_gone.jpg"),
     r"dataset_flickr8k.json: images\[3\] \(9999_gone.jpg\): image missing from .*flickr8k-images"),
    (lambda images: images[4].update(sentences=[]),
     r"dataset_flickr8k.json: images\[4\] \(1004_photo.jpg\): no captions"),
    (lambda images: images.__getitem__(5).pop("sentences"),
     r"images\[5\] \(1005_photo.jpg\): no captions"),
    (lambda images: images[2].update(split="validation"),
     r"images\[2\] \(1002_photo.jpg\): unknown split 'validation'; valid: train, restval, val, test"),
    (lambda images: images[7]["sentences"][1].update(raw=["a", "list"]),
     r"images\[7\] \(1007_photo.jpg\): caption sentences\[1\].raw is list \['a', 'list'\], not a string"),
    (lambda images: images[1]["sentences"][0].update(raw=None),
     r"images\[1\] \(1001_photo.jpg\): caption sentences\[0\].raw is NoneType None, not a string"),
    (lambda images: images[1]["sentences"][2].update(raw="  "),
     r"images\[1\] \(1001_photo.jpg\): caption sentences\[2\].raw is empty"),
    (lambda images: images[6].update(filename=images[0]["filename"]),
     r"images\[6\] and images\[0\] are both .*1000_photo.jpg"),
    (lambda images: [im.update(split="val") for im in images if im["split"] == "test"],
     r"dataset_flickr8k.json: no test images"),
])
def test_karpathy_bad_input_names_the_culprit_and_writes_nothing(project, tmp_path, change, message):
    source = flickr_layout(tmp_path / "flickr")
    edit_json(source, change)
    set_params(project, **karpathy_params(source))
    with pytest.raises(PipelineError, match=message):
        run_stage("prepare")
    assert not (project / "data").exists()


def test_karpathy_unreadable_json(project, tmp_path):
    source = flickr_layout(tmp_path / "flickr")
    (source / "dataset_flickr8k.json").write_text('{"images": [')
    set_params(project, **karpathy_params(source))
    with pytest.raises(PipelineError, match=r"dataset_flickr8k.json: unreadable JSON"):
        run_stage("prepare")
    (source / "dataset_flickr8k.json").write_text('{"annotations": []}')
    with pytest.raises(PipelineError, match=r"dataset_flickr8k.json: no 'images' list"):
        run_stage("prepare")


# ---- fashion_mnist_captions -----------------------------------------------------------------------------------

def test_fashion_mnist_keeps_empty_captions(project):
    set_params(project, **{"prepare.dataset": "fashion_mnist"})
    run_stage("prepare")
    assert all(c == [] for c in tables()["train"]["captions"].to_pylist())
    assert "captions_per_image" not in dataset_info() and "synthetic" not in dataset_info()


def test_fashion_mnist_single_label_caption(project):
    set_params(project, **{"prepare.dataset": "fashion_mnist"})
    run_stage("prepare")
    plain = tables()
    set_params(project, **{"prepare.dataset": "fashion_mnist_captions", "prepare.fashion_mnist_captions.captions": 1})
    run_stage("prepare")
    t = tables()
    for split in SPLITS:                              # the same images and split as fashion_mnist
        assert t[split]["image"].to_pylist() == plain[split]["image"].to_pylist()
        assert [u.split("-", 1)[1] for u in t[split]["uid"].to_pylist()] == \
            [u.split("-", 1)[1] for u in plain[split]["uid"].to_pylist()]
    expected = {"T-shirt/top": "This is a t-shirt/top", "Ankle boot": "This is an ankle boot",
                "Bag": "This is a bag"}
    for name, caps in zip(t["test"]["class_name"].to_pylist(), t["test"]["captions"].to_pylist()):
        assert caps == [expected.get(name, f"This is a {name.lower()}")]
    assert dataset_info()["captions_per_image"] == {"min": 1, "max": 1}


def test_fashion_mnist_multi_caption_varied_and_seeded(project):
    set_params(project, **{"prepare.dataset": "fashion_mnist_captions", "prepare.fashion_mnist_captions.captions": 5})
    run_stage("prepare")
    first = (project / "data/prepared/train-00000.parquet").read_bytes()
    test_captions = tables()["test"]["captions"].to_pylist()
    train = tables()["train"]
    captions = train["captions"].to_pylist()
    assert all(len(c) == len(set(c)) == 5 for c in captions)
    assert all(name.lower() in text for name, caps in zip(train["class_name"].to_pylist(), captions) for text in caps)
    assert len({tuple(c) for c in captions}) > len(captions) // 2          # templates vary from image to image
    run_stage("prepare")
    assert (project / "data/prepared/train-00000.parquet").read_bytes() == first
    set_params(project, seed=3)
    run_stage("prepare")
    assert tables()["test"]["captions"].to_pylist() != test_captions


# ---- scenes ---------------------------------------------------------------------------------------------------

SCENES = {"prepare.dataset": "scenes", "prepare.scenes.size": 32, "prepare.scenes.train": 60,
          "prepare.scenes.val": 12, "prepare.scenes.test": 15}


def test_scenes_prepared_synthetic_and_seeded(project):
    set_params(project, **SCENES)
    run_stage("prepare")
    info = dataset_info()
    assert info["synthetic"] is True and "synthetic" in info["text"]
    assert info["sizes"] == {"train": 60, "val": 12, "test": 15}
    assert (info["channels"], info["height"], info["width"]) == (3, 32, 32)
    assert info["captions_per_image"] == {"min": 5, "max": 5}
    t = tables()
    assert t["val"]["uid"].to_pylist()[:2] == ["scenes-val-00000", "scenes-val-00001"]
    assert all(len(set(c)) == 5 for table in t.values() for c in table["captions"].to_pylist())
    first = {s: (project / f"data/prepared/{s}-00000.parquet").read_bytes() for s in SPLITS}
    run_stage("prepare")
    assert {s: (project / f"data/prepared/{s}-00000.parquet").read_bytes() for s in SPLITS} == first
    set_params(project, seed=1)
    run_stage("prepare")
    assert (project / "data/prepared/test-00000.parquet").read_bytes() != first["test"]


def test_scenes_items_train_from_train_eval_from_test(fashion_dir):
    from mmdistill.data.synthetic import make_scenes
    splits, _, layouts = make_scenes(fashion_dir, 32, 3, {"train": 50, "val": 20, "test": 20}, 5, 0)
    assert all(it.source == "train" for scene in layouts["train"] for it in scene)
    used = {s: {it.index for scene in layouts[s] for it in scene if it.source == "test"} for s in ("val", "test")}
    assert all(it.source == "test" for s in ("val", "test") for scene in layouts[s] for it in scene)
    assert used["val"] and used["test"] and not (used["val"] & used["test"])
    counts = [len(scene) for scene in layouts["train"]]
    assert min(counts) == 1 and max(counts) == 3
    for scene in layouts["train"]:
        assert len({it.cell for it in scene}) == len(scene)
    assert splits["train"][0].shape == (50, 32, 32, 3) and splits["train"][0].dtype == np.uint8


def test_scene_captions_describe_the_composition_not_a_label(fashion_dir):
    from mmdistill.data.synthetic import COLOURS, NOUNS, make_scenes
    splits, _, layouts = make_scenes(fashion_dir, 32, 3, {"train": 200, "val": 5, "test": 5}, 5, 0)
    _, labels, captions = splits["train"]
    colour_words = {w for _, _, words in COLOURS for w in words}
    places = ("left", "right", "top", "bottom", "upper", "lower", "centre", "middle", "above", "below", "under",
              "beneath", "over")
    for scene, caps in zip(layouts["train"], captions):
        for text in caps:
            for it in scene:                     # every item is named (with one of its class's words) ...
                assert any(noun in text for noun in NOUNS[it.label]), (text, it)
            assert sum(text.count(p) for p in places) >= len(scene)   # ... and placed
    # scenes of one label share (almost) no caption: the text carries colour, place, size and other items
    by_label = {}
    for label, caps in zip(labels.tolist(), captions):
        by_label.setdefault(label, []).append(set(caps))
    shared = sum(len(a & b) for sets in by_label.values() for i, a in enumerate(sets) for b in sets[i + 1:])
    assert shared <= 2
    assert any(w in text for caps in captions for text in caps for w in colour_words)
    # the orders and templates vary: an item is not always named first
    firsts = [min(range(len(scene)), key=lambda k: min((text.find(n) for n in NOUNS[scene[k].label]
                                                           if n in text), default=10 ** 6))
              for scene, caps in zip(layouts["train"], captions) if len(scene) > 1 for text in caps]
    assert len(set(firsts)) > 1

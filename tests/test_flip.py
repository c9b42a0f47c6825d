"""DSA's horizontal flip is the dataset's decision (issue 14, item 21): prepare records a dataset-level default (grey
digits/clothing: no flip, although the DC/DSA and DM code bases flip clothing, which is `flip: true`; natural colour
images: flip), every `flip: auto` param follows it, `true`/`false` override it, and each run records the value it
used."""
import json

import pytest

from mmdistill.core.config import load_params, read_yaml
from mmdistill.core.storage import PipelineError, load_tensors
from mmdistill.data.datasets import dataset_info, load_split, resolve_flip
from mmdistill.data.sources import default_flip
from tests.conftest import REPO, method_run, run_stage, set_params
from tests.test_prepare import folder_params, make_cifar_archive, make_folder

FLIPS = ("distill.distribution.flip", "distill.gradient.flip", "distill.dsdm.flip", "pretrain.flip", "evaluate.flip")


def test_params_default_to_auto():
    params = read_yaml(REPO / "params.yaml")
    for key in FLIPS:
        node = params
        for part in key.split("."):
            node = node[part]
        assert node == "auto", key


def test_dataset_default():
    assert default_flip("fashion_mnist", 1) is False
    assert default_flip("cifar10", 3) is True and default_flip("imagenette", 3) is True
    assert default_flip("image_folder", 3) is True and default_flip("image_folder", 1) is False
    # the image-text sets: made from Fashion-MNIST (scenes' captions also name left/right positions) no flip;
    # karpathy's colour photos flip
    assert default_flip("fashion_mnist_captions", 1) is False and default_flip("scenes", 3) is False
    assert default_flip("karpathy", 3) is True


def test_resolve_flip_follows_the_dataset_unless_set():
    assert resolve_flip("auto", "evaluate.flip", {"flip": True}) is True
    assert resolve_flip("auto", "evaluate.flip", {"flip": False}) is False
    assert resolve_flip(False, "evaluate.flip", {"flip": True}) is False
    assert resolve_flip(True, "evaluate.flip", {"flip": False}) is True
    with pytest.raises(PipelineError, match="param 'evaluate.flip' is auto, but .* records no 'flip'.*prepare"):
        resolve_flip("auto", "evaluate.flip", {"name": "fashion_mnist"})  # prepared by an older prepare


def test_schema_accepts_auto_true_false_only(project):
    for value in ("auto", True, False):
        set_params(project, **{"evaluate.flip": value})
        load_params()
    set_params(project, **{"evaluate.flip": "yes"})
    with pytest.raises(PipelineError, match="'evaluate.flip' = 'yes' is not one of: auto, true or false"):
        load_params()


def test_prepare_records_the_default(project, tmp_path):
    run_stage("prepare")
    assert dataset_info()["flip"] is False  # fashion_mnist: grey clothing
    make_cifar_archive(tmp_path / "cifar-10-python.tar.gz")
    set_params(project, **{"prepare.dataset": "cifar10", "prepare.source": str(tmp_path), "prepare.val_per_class": 2})
    run_stage("prepare")
    assert dataset_info()["flip"] is True  # natural colour images
    make_folder(tmp_path / "photos")
    set_params(project, **folder_params(tmp_path / "photos"))
    run_stage("prepare")
    assert dataset_info()["flip"] is True
    set_params(project, **{"prepare.channels": 1})  # the same folder as grey images
    run_stage("prepare")
    assert dataset_info()["flip"] is False


def test_runs_use_and_record_the_datasets_flip(project, tmp_path):
    """On colour photos every `auto` flip is on: the distilled set and the evaluation record say so; on Fashion-MNIST
    it is off; an explicit value wins."""
    make_folder(tmp_path / "photos", per_class=12)
    set_params(project, **folder_params(tmp_path / "photos"), **{"distill.distribution.iterations": 1})
    run_stage("prepare")
    train = load_split("train")
    assert "flip" in method_run(load_params(), "dm", 1, train).augmentation().dsa.families
    assert "flip" in method_run(load_params(), "dsa", 1, train).augmentation().dsa.families
    run_stage("distill", "--method", "dm", "--ipc", "1")
    assert load_tensors("data/distilled/dm-ipc1.pt")["info"]["settings"]["flip"] is True
    run_stage("evaluate", "--method", "dm", "--ipc", "1")
    record = json.loads((project / "outputs/evaluate/dm-ipc1.json").read_text())
    assert record["augment"] is True and record["flip"] is True and record["distill"]["flip"] is True

    set_params(project, **{"distill.distribution.flip": False, "evaluate.flip": False})
    assert "flip" not in method_run(load_params(), "dm", 1, train).augmentation().dsa.families
    run_stage("distill", "--method", "dm", "--ipc", "1")
    assert load_tensors("data/distilled/dm-ipc1.pt")["info"]["settings"]["flip"] is False
    run_stage("evaluate", "--method", "dm", "--ipc", "1")
    assert json.loads((project / "outputs/evaluate/dm-ipc1.json").read_text())["flip"] is False


def test_fashion_mnist_runs_without_flip(project):
    run_stage("prepare")
    train = load_split("train")
    assert "flip" not in method_run(load_params(), "dm", 1, train).augmentation().dsa.families
    run_stage("distill", "--method", "dm", "--ipc", "1")
    assert load_tensors("data/distilled/dm-ipc1.pt")["info"]["settings"]["flip"] is False


def test_recorded_settings_are_what_a_run_records(annotated):
    """runs.recorded_settings (for a report's staleness check) predicts info.settings: flip resolved, and the
    selection's choice for kcenter / forgetting."""
    from mmdistill.distill.runs import recorded_settings
    run_stage("selection")
    params, info = load_params(), dataset_info()
    for method in ("random", "kcenter", "forgetting", "dm", "masked_dm"):
        run_stage("distill", "--method", method, "--ipc", "1")
        assert load_tensors(f"data/distilled/{method}-ipc1.pt")["info"]["settings"] == \
            recorded_settings(params, method, info), method
    assert recorded_settings(params, "dm", {**info, "flip": True})["flip"] is True

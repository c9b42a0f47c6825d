"""evaluate: cross-architecture metrics, the full-data upper bound, renormalisation, clear errors."""
import json

import pytest
import torch

from mmdistill.core.paths import DISTILLED
from mmdistill.core.storage import PipelineError, save_tensors
from mmdistill.data.datasets import load_split
from mmdistill.evaluate import classification as evaluate
from tests.conftest import run_stage, set_params

torch.set_num_threads(1)


def write_synthetic(name="random-ipc1", mean=None, std=None, images=None):
    """One real train image per class, stored as a distilled set (the format of mmdistill.distill.runs)."""
    train = load_split("train")
    index = [int((train.labels == c).nonzero()[0]) for c in range(len(train.class_names))]
    pixels = train.images[index].float() / 255
    mean, std = mean or train.mean, std or train.std
    if images is None:
        images = (pixels - torch.tensor(mean).view(1, -1, 1, 1)) / torch.tensor(std).view(1, -1, 1, 1)
    save_tensors({"images": images, "labels": train.labels[index], "mean": mean, "std": std,
                  "info": {"settings": {"note": "test"}}}, DISTILLED / f"{name}.pt")
    return train.normalized()[index]


@pytest.fixture
def prepared(project):
    run_stage("prepare")
    set_params(project, **{"evaluate.epochs": 2, "evaluate.repeats": 2})
    return project


def metrics_of(root, name="random-ipc1"):
    return json.loads((root / f"outputs/metrics/{name}.json").read_text())


def test_per_architecture_results_and_default_net_unchanged(prepared):
    write_synthetic()
    run_stage("evaluate", "--method", "random", "--ipc", "1")
    alone = metrics_of(prepared)
    set_params(prepared, **{"evaluate.nets": ["convnet3", "alexnet"]})
    run_stage("evaluate", "--method", "random", "--ipc", "1")
    both = metrics_of(prepared)
    assert both["nets"] == ["convnet3", "alexnet"] and both["net"] == "convnet3"
    assert set(both["architectures"]) == {"convnet3", "alexnet"}
    for m in both["architectures"].values():
        assert len(m["test_accuracies"]) == len(m["val_accuracies"]) == 2
        assert 0 <= m["test_accuracy_mean"] <= 100
    for key in ("test_accuracy_mean", "test_accuracy_std", "val_accuracy_mean", "test_accuracies"):
        assert both[key] == both["architectures"]["convnet3"][key] == alone[key]  # same seeds, same default numbers
    assert both["distill"] == {"note": "test"} and both["train_images"] == 10


def test_synthetic_set_in_another_normalisation_is_converted(prepared):
    expected = write_synthetic(mean=[0.5], std=[0.25])
    images, labels, _ = evaluate.load_synthetic(DISTILLED / "random-ipc1.pt", load_split("test"))
    assert torch.allclose(images, expected, atol=1e-5) and labels.tolist() == list(range(10))


def test_shape_mismatch_is_a_clear_error(prepared):
    write_synthetic(images=torch.zeros(10, 3, 32, 32))
    with pytest.raises(PipelineError, match=r"random-ipc1.pt: synthetic images \(3, 32, 32\) do not match"):
        run_stage("evaluate", "--method", "random", "--ipc", "1")


def test_unknown_architecture_fails_before_training(prepared):
    write_synthetic()
    set_params(prepared, **{"evaluate.nets": ["convnet3", "resnet50"]})
    with pytest.raises(PipelineError, match="param 'evaluate.nets': unknown network 'resnet50'"):
        run_stage("evaluate", "--method", "random", "--ipc", "1")
    assert not (prepared / "outputs/metrics/random-ipc1.json").exists()


def test_full_train_split_upper_bound(prepared):
    set_params(prepared, **{"evaluate_full.epochs": 2, "evaluate_full.repeats": 1, "evaluate_full.augment": False})
    run_stage("evaluate", "--full")
    m = metrics_of(prepared, "full")
    assert m["method"] == "full" and m["ipc"] is None and m["train_images"] == len(load_split("train"))
    assert m["epochs"] == 2 and m["augment"] is False and len(m["test_accuracies"]) == 1 and 0 <= m["test_accuracy_mean"] <= 100

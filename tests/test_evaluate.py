"""evaluate: cross-architecture metrics, the full-data upper bound, renormalisation, clear errors."""
import json
import shutil

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


def record_of(root, name="random-ipc1"):
    return json.loads((root / f"outputs/evaluate/{name}.json").read_text())


def test_per_architecture_results_and_default_net_unchanged(prepared):
    write_synthetic()
    run_stage("evaluate", "--method", "random", "--ipc", "1")
    alone, alone_record = metrics_of(prepared), record_of(prepared)
    set_params(prepared, **{"evaluate.nets": ["convnet3", "alexnet"]})
    run_stage("evaluate", "--method", "random", "--ipc", "1")
    both, record = metrics_of(prepared), record_of(prepared)
    assert record["nets"] == ["convnet3", "alexnet"] and record["net"] == "convnet3"
    assert set(both) == set(record["accuracies"]) == {"convnet3", "alexnet"}
    for name, m in both.items():
        assert set(m) == {"test_accuracy_mean", "test_accuracy_std", "val_accuracy_mean", "val_accuracy_std"}
        assert len(record["accuracies"][name]["test_accuracies"]) == 2
        assert len(record["accuracies"][name]["val_accuracies"]) == 2
        assert 0 <= m["test_accuracy_mean"] <= 100
    assert both["convnet3"] == alone["convnet3"]  # same seeds, same default numbers
    assert record["accuracies"]["convnet3"] == alone_record["accuracies"]["convnet3"]
    assert record["distill"] == {"note": "test"} and record["train_images"] == 10
    assert record["method"] == "random" and record["ipc"] == 1 and record["repeats"] == 2 and record["epochs"] == 2


def test_metrics_hold_measured_numbers_only(prepared):
    """`dvc metrics show`: one row per (method, IPC), accuracies by network; every setting is in the record."""
    write_synthetic()
    run_stage("evaluate", "--method", "random", "--ipc", "1")

    def leaves(node, prefix=""):
        if isinstance(node, dict):
            return {k: v for key, child in node.items() for k, v in leaves(child, f"{prefix}{key}.").items()}
        return {prefix[:-1]: node}

    metrics = leaves(metrics_of(prepared))
    assert sorted(metrics) == ["convnet3.test_accuracy_mean", "convnet3.test_accuracy_std",
                               "convnet3.val_accuracy_mean", "convnet3.val_accuracy_std"]
    assert all(isinstance(v, float) for v in metrics.values())
    record = record_of(prepared)
    for key in ("lr", "batch_size", "augment", "seed", "versions", "distill"):
        assert key in record


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
    with pytest.raises(PipelineError,
                       match=r"'evaluate.nets\[1\]' = 'resnet50' is not one of: convnet, .*did you mean 'resnet18'\?"):
        run_stage("evaluate", "--method", "random", "--ipc", "1")
    assert not (prepared / "outputs/metrics/random-ipc1.json").exists()
    assert not (prepared / "outputs/evaluate/random-ipc1.json").exists()


def test_full_train_split_upper_bound(prepared):
    set_params(prepared, **{"evaluate_full.epochs": 2, "evaluate_full.repeats": 1, "evaluate_full.augment": False})
    run_stage("evaluate", "--full")
    m, r = metrics_of(prepared, "full"), record_of(prepared, "full")
    assert r["method"] == "full" and r["ipc"] is None and r["train_images"] == len(load_split("train"))
    assert r["epochs"] == 2 and r["augment"] is False and len(r["accuracies"]["convnet3"]["test_accuracies"]) == 1
    assert 0 <= m["convnet3"]["test_accuracy_mean"] <= 100


def test_precision_and_compile_are_recorded_deterministic_and_checked(prepared, monkeypatch):
    """evaluate.precision: bf16 by default, the same numbers on a rerun; fp32 one switch away; fp16 needs CUDA and
    says so, naming the param, before anything is written. evaluate.compile (the tests run eager): a backend is
    recorded and deterministic; an unknown one, or inductor on CPU without a C++ compiler, is a one-line error."""
    write_synthetic()
    run_stage("evaluate", "--method", "random", "--ipc", "1")
    first = record_of(prepared)
    run_stage("evaluate", "--method", "random", "--ipc", "1")
    assert record_of(prepared)["accuracies"] == first["accuracies"]
    assert (first["precision"], first["compile"]) == ("bf16", None)
    set_params(prepared, **{"evaluate.precision": "fp32"})
    run_stage("evaluate", "--method", "random", "--ipc", "1")
    assert record_of(prepared)["precision"] == "fp32"
    set_params(prepared, **{"evaluate.compile": "eager"})  # dynamo alone, no C++ build
    run_stage("evaluate", "--method", "random", "--ipc", "1")
    compiled = record_of(prepared)
    run_stage("evaluate", "--method", "random", "--ipc", "1")
    assert compiled["compile"] == "eager" and record_of(prepared)["accuracies"] == compiled["accuracies"]
    (prepared / "outputs/evaluate/random-ipc1.json").unlink()
    for value, message in (("turbo", r"'evaluate.compile'.*inductor"),
                           ("inductor", r"param 'evaluate.compile' = 'inductor' needs a C\+\+ compiler")):
        set_params(prepared, **{"evaluate.compile": value})
        with monkeypatch.context() as m:
            m.setattr("shutil.which", lambda name: None)
            with pytest.raises(PipelineError, match=message):
                run_stage("evaluate", "--method", "random", "--ipc", "1")
    set_params(prepared, **{"evaluate.compile": "", "evaluate.precision": "fp16"})
    with pytest.raises(PipelineError, match=r"param 'evaluate.precision' = fp16 needs a CUDA device"):
        run_stage("evaluate", "--method", "random", "--ipc", "1")
    assert not (prepared / "outputs/evaluate/random-ipc1.json").exists()


@pytest.mark.slow
@pytest.mark.skipif(not any(shutil.which(c) for c in ("g++", "c++", "clang++")),
                    reason="inductor on CPU needs a C++ compiler (README: requirements)")
def test_inductor_evaluation_matches_itself(prepared):
    """The default evaluation (bf16 + inductor, C++ compiled): the same numbers on a rerun (a warm compile cache)."""
    write_synthetic()
    set_params(prepared, **{"evaluate.compile": "inductor"})
    run_stage("evaluate", "--method", "random", "--ipc", "1")
    first = record_of(prepared)
    run_stage("evaluate", "--method", "random", "--ipc", "1")
    assert first["compile"] == "inductor" and record_of(prepared)["accuracies"] == first["accuracies"]

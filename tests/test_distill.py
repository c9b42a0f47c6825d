import json

import pytest
import torch

from mmdistill.core.config import load_params
from mmdistill.core.storage import PipelineError, load_tensors
from mmdistill.data.datasets import load_split
from mmdistill.distill.distribution_matching import distribution_matching
from mmdistill.distill.initial import random_selection
from mmdistill.distill.losses import MaskedTerm, class_means
from mmdistill.nn.augment import DifferentiableAugment
from mmdistill.nn.nets import make_net
from tests.conftest import method_run, run_stage, set_params


def dm_objective(images, real: torch.Tensor, classes: int, seeds=range(5)) -> float:
    """The DM loss without augmentation, averaged over a fixed set of random networks."""
    total = 0.0
    with torch.no_grad():
        for s in seeds:
            torch.manual_seed(1000 + s)
            net = make_net("convnet3", images.shape[1], classes, images.shape[2])
            total += ((class_means(net.embed(real), classes) - class_means(net.embed(images), classes)) ** 2).sum()
    return float(total) / len(seeds)


@pytest.mark.slow  # 10 s at load 4.7 on 2 cores
def test_dm_reduces_the_distribution_gap(project):
    run_stage("prepare")
    train = load_split("train")
    params = load_params()
    params["distill"]["dm"].update(iterations=25, batch_real=10, lr=0.1, augment=False)
    init = random_selection(train, 1, seed=0)
    synthetic, history, _ = distribution_matching(method_run(params, "dm", 1, train), init, 1.0, None)
    order = torch.argsort(train.labels, stable=True)
    real = train.normalized()[order]
    before = dm_objective(train.normalized()[init], real, 10)
    after = dm_objective(synthetic, real, 10)
    assert len(history) == 25
    assert after < 0.7 * before


def test_masked_term_moves_only_foreground_pixels(project):
    run_stage("prepare")
    train = load_split("train")
    params = load_params()
    params["distill"]["masked_dm"].update(iterations=3, batch_real=4, full_weight=0.0, masked_weight=1.0)
    init = random_selection(train, 1, seed=0)
    masks = torch.zeros(len(train), 1, 28, 28)
    masks[:, :, 5:20, 5:20] = 1
    run = method_run(params, "masked_dm", 1, train)
    synthetic, _, _ = distribution_matching(run, init, 0.0, MaskedTerm(masks, 1.0, None))
    start = train.normalized()[init]
    changed = (synthetic != start)
    assert changed[:, :, 5:20, 5:20].any()
    assert not changed[masks[init] == 0].any()


def test_augmentation_is_differentiable_and_replayable():
    aug = DifferentiableAugment()
    x = torch.randn(4, 1, 28, 28, requires_grad=True)
    assert torch.equal(aug(x, seed=3), aug(x, seed=3))
    aug(x, seed=3).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


@pytest.fixture
def selected(annotated):
    run_stage("selection")
    set_params(annotated, **{"distill.gradient.iterations": 2, "distill.gradient.batch_real": 4,
                             "distill.gradient.outer_loop": 2, "distill.gradient.inner_loop": 1})
    return annotated


@pytest.mark.parametrize("method", ["random", "kmeans", "herding", "kcenter", "dm", "masked_dm", "dsa"])
def test_distill_methods_write_sets_and_grids(selected, method):
    run_stage("distill", "--method", method, "--ipc", "2")
    out = load_tensors(f"data/distilled/{method}-ipc2.pt")
    assert out["images"].shape == (20, 1, 28, 28)
    assert out["labels"].tolist() == [c for c in range(10) for _ in range(2)]
    assert len(out["source_uids"]) == 20 and out["info"]["method"] == method
    # masked_dm's default full term is gradient matching: the gradient family's 2 iterations
    assert len(out["loss"]) == {"dm": 3, "masked_dm": 2, "dsa": 2, "masked_dc": 2}.get(method, 0)
    assert (selected / f"outputs/figures/distilled/{method}-ipc2.png").stat().st_size > 0


def test_unknown_method_lists_valid(selected):
    with pytest.raises(PipelineError, match="valid: random, kmeans, herding, kcenter, forgetting, forgetting_most, dm, "
                                            "masked_dm, masked_dm_means, dc, dsa, masked_dc, masked_dc_cosine, dsdm"):
        run_stage("distill", "--method", "mtt", "--ipc", "1")


def test_ipc_larger_than_class(selected):
    with pytest.raises(PipelineError, match="IPC 11 is larger than class 'T-shirt/top'"):
        run_stage("distill", "--method", "random", "--ipc", "11")


def test_batch_real_larger_than_class(selected):
    set_params(selected, **{"distill.dm.batch_real": 500})
    with pytest.raises(PipelineError, match="distill.dm.batch_real"):
        run_stage("distill", "--method", "dm", "--ipc", "1")


@pytest.mark.slow  # select + 4 distill/evaluate runs + report: 14 s at load 4.7 on 2 cores
def test_evaluate_and_report(selected):
    for method in ("random", "kmeans", "dm", "masked_dm"):
        for ipc in (1, 2):
            run_stage("distill", "--method", method, "--ipc", str(ipc))
            run_stage("evaluate", "--method", method, "--ipc", str(ipc))
    metrics = json.loads((selected / "outputs/metrics/dm-ipc2.json").read_text())["convnet3"]
    record = json.loads((selected / "outputs/evaluate/dm-ipc2.json").read_text())
    assert len(record["accuracies"]["convnet3"]["test_accuracies"]) == 2
    assert 0 <= metrics["test_accuracy_mean"] <= 100 and record["repeats"] == 2
    run_stage("report")
    text = (selected / "outputs/report.md").read_text()
    assert "| method | IPC | accuracy (%) |" in text
    assert f"| dm | 2 | {metrics['test_accuracy_mean']:.2f} ± {metrics['test_accuracy_std']:.2f} |" in text
    assert "offline_imagenet" in text and "seed: 0" in text
    # which flip ran (issue 14, item 21): Fashion-MNIST's default is off, every `auto` flip followed it
    assert "DSA augmentation on, flip off" in text and "the dataset's default (recorded by prepare) is off" in text
    assert "- dm: " in text and "flip False" in text

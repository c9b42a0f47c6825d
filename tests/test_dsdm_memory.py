"""DSDM's memory bank (issue 14, item 1): the paper's Eq. 6-8 keep ONE bank of integrated prototypes across the
pool, h = 0 at the first step (h^(1) = 0), then an EMA; the earlier per-network banks stay as `memory: per_network`."""
import pytest
import torch

from mmdistill.core.storage import load_tensors
from mmdistill.distill.methods.dsdm import memorise, new_memory, recalled
from tests.conftest import run_stage, set_params

torch.set_num_threads(1)


def test_integrated_bank_is_shared_and_starts_at_zero():
    state = new_memory("integrated", models=3, classes=2, dim=4, device="cpu")
    p1, p2, p3 = torch.ones(2, 4), 2 * torch.ones(2, 4), 3 * torch.ones(2, 4)
    assert torch.equal(recalled("integrated", state, 0), torch.zeros(2, 4))  # t = 1: h = 0, the term is counted
    memorise("integrated", state, 0, 0, p1, ema=0.9)
    assert torch.equal(recalled("integrated", state, 1), torch.zeros(2, 4))  # Eq. 8: h^(1) = 0
    memorise("integrated", state, 1, 1, p2, ema=0.9)
    h2 = 0.1 * p2
    for m in range(3):  # one bank: every network of the pool recalls what network 1 stored
        assert torch.allclose(recalled("integrated", state, m), h2)
    memorise("integrated", state, 2, 2, p3, ema=0.9)
    assert torch.allclose(recalled("integrated", state, 0), 0.9 * h2 + 0.1 * p3)


def test_per_network_banks_are_the_earlier_form():
    state = new_memory("per_network", models=3, classes=2, dim=4, device="cpu")
    p1, p2 = torch.ones(2, 4), 2 * torch.ones(2, 4)
    assert recalled("per_network", state, 0) is None  # no historical term before a network's first use
    memorise("per_network", state, 0, 0, p1, ema=0.9)
    assert torch.equal(recalled("per_network", state, 0), p1) and recalled("per_network", state, 1) is None
    memorise("per_network", state, 0, 1, p2, ema=0.9)
    assert torch.allclose(recalled("per_network", state, 0), 0.9 * p1 + 0.1 * p2)


@pytest.fixture
def pooled(project):
    run_stage("prepare")
    set_params(project, **{"pretrain.models": 2, "pretrain.epochs": 1, "distill.dsdm.iterations": 1,
                           "distill.dsdm.batch_real": 4, "distill.dsdm.augment": False,
                           "distill.dsdm.lambda_diversity": 0.0})
    run_stage("pretrain")
    return project


def first_loss(root, **dsdm) -> float:
    set_params(root, **{f"distill.dsdm.{k}": v for k, v in dsdm.items()})
    run_stage("distill", "--method", "dsdm", "--ipc", "1")
    return float(load_tensors("data/distilled/dsdm-ipc1.pt")["loss"][0])


@pytest.mark.slow  # pretrain + 4 one-iteration dsdm runs: ~10 s on 2 loaded cores
def test_first_step_matches_against_h_zero(pooled):
    """The default integrated bank counts the historical term from the first step (h = 0: lambda_2 |mu_S|^2); the
    per-network banks leave it out until a network has been used."""
    assert load_tensors("data/pretrained/pool.pt")["info"]["settings"]["flip"] is False
    plain = first_loss(pooled, lambda_history=0.0)
    with_history = first_loss(pooled, lambda_history=1.0)
    assert with_history > plain  # |mu_S|^2 > 0 with h = 0
    assert load_tensors("data/distilled/dsdm-ipc1.pt")["info"]["settings"]["memory"] == "integrated"
    assert first_loss(pooled, lambda_history=0.0, memory="per_network") == plain
    assert first_loss(pooled, lambda_history=1.0, memory="per_network") == plain

"""The shared distillation engine and the DC / DSA / masked DC / DSDM losses on tiny data."""
import subprocess

import pytest
import torch

from mmdistill.core.config import load_params
from mmdistill.core.storage import PipelineError, load_tensors
from mmdistill.data.datasets import load_split
from mmdistill.distill.gradient_matching import gradient_matching
from mmdistill.distill.initial import random_selection
from mmdistill.distill.losses import (
    MaskedTerm,
    covariance,
    distribution_gap,
    dsdm_terms,
    factor_decode,
    factor_encode,
    gradient_match,
)
from mmdistill.distill.methods.dsdm import load_pool
from mmdistill.distill.reference import distribution_gap_loop, gradient_match_loop
from mmdistill.nn.augment import DifferentiableAugment
from mmdistill.nn.nets import make_net
from tests.conftest import method_run, run_stage, set_params

torch.set_num_threads(1)
CPU = torch.device("cpu")
TINY_DC = {"iterations": 2, "batch_real": 4, "outer_loop": 2, "inner_loop": 1}


@pytest.fixture
def prepared(project):
    run_stage("prepare")
    set_params(project, **{f"distill.gradient.{k}": v for k, v in TINY_DC.items()})
    set_params(project, **{"distill.dsdm.iterations": 3, "distill.dsdm.batch_real": 4,
                           "pretrain.models": 2, "pretrain.epochs": 1})
    return project


def class_major(train):
    order = torch.argsort(train.labels, stable=True)
    return train.normalized()[order]


def test_batched_losses_equal_the_per_class_loop():
    torch.manual_seed(0)
    net = make_net("convnet3", 1, 3, 28)
    real, syn = torch.randn(12, 1, 28, 28), torch.randn(6, 1, 28, 28)
    assert torch.allclose(distribution_gap(net, real, syn, 3), distribution_gap_loop(net, real, syn, 3), rtol=1e-4)
    assert torch.allclose(gradient_match(net, real, syn, 3), gradient_match_loop(net, real, syn, 3), rtol=1e-4)
    assert torch.allclose(gradient_match(net, real, syn, 3, how="vmap"), gradient_match_loop(net, real, syn, 3),
                          rtol=1e-4)


def test_gradient_matching_of_identical_sets_is_zero():
    torch.manual_seed(0)
    net = make_net("convnet3", 1, 3, 28)
    images = torch.randn(6, 1, 28, 28)
    same = gradient_match(net, images, images.clone(), 3)
    different = gradient_match(net, images, torch.randn(6, 1, 28, 28), 3)
    assert same.item() < 1e-3 and different.item() > 10


def test_covariance_and_factor_layout():
    features = torch.randn(2 * 5, 4)
    cov = covariance(features, 2)
    assert torch.allclose(cov[1], torch.cov(features[5:].T, correction=0), atol=1e-6)
    images = torch.rand(8, 1, 28, 28)
    packed = factor_encode(images, 2)
    assert packed.shape == (2, 1, 28, 28)
    assert torch.allclose(packed[0, :, :14, 14:], torch.nn.functional.avg_pool2d(images[1:2], 2)[0])
    assert factor_decode(packed, 2).shape == (8, 1, 28, 28)
    with pytest.raises(PipelineError, match="not divisible by the factor 3"):
        factor_encode(images, 3)


@pytest.mark.parametrize("augment", [False, True], ids=["dc", "dsa"])
def test_gradient_matching_loss_decreases(prepared, augment):
    """A few pixel steps under one network (as within DC's outer loop) reduce the DC / DSA loss."""
    train = load_split("train")
    real = class_major(train)
    syn = train.normalized()[random_selection(train, 1, seed=0)].requires_grad_(True)
    aug = DifferentiableAugment() if augment else (lambda x, seed: x)
    torch.manual_seed(0)
    net = make_net("convnet3", 1, 10, 28)
    opt = torch.optim.SGD([syn], lr=0.1, momentum=0.5)
    losses = []
    for _ in range(5):
        loss = gradient_match(net, aug(real, 7), aug(syn, 7), 10)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.95 * losses[0]


def test_dc_runs_outer_and_inner_loops(prepared):
    train = load_split("train")
    init = random_selection(train, 1, seed=0)
    synthetic, history, _ = gradient_matching(method_run(load_params(), "dc", 1, train), init, 1.0, None)
    assert len(history) == TINY_DC["iterations"] and all(h > 0 for h in history)
    assert not torch.equal(synthetic, train.normalized()[init])


@pytest.mark.parametrize("match", [None, distribution_gap], ids=["dc", "dm"])
def test_masked_terms_move_only_foreground_pixels(prepared, match):
    """masked_dc, and masked_dm paired with gradient matching (full_term: dc), with the full term off."""
    train = load_split("train")
    init = random_selection(train, 1, seed=0)
    masks = torch.zeros(len(train), 1, 28, 28)
    masks[:, :, 5:20, 5:20] = 1
    run = method_run(load_params(), "masked_dc", 1, train)
    synthetic, _, _ = gradient_matching(run, init, 0.0, MaskedTerm(masks, 1.0, match))
    changed = synthetic != train.normalized()[init]
    assert changed[:, :, 5:20, 5:20].any() and not changed[masks[init] == 0].any()


def test_masked_dc_ignores_real_background(prepared):
    train = load_split("train")
    synthetic = train.normalized()[random_selection(train, 1, seed=0)]
    masks = torch.zeros(10, 1, 28, 28)
    masks[:, :, 5:20, 5:20] = 1
    # the masked term sees real images only through their foreground
    torch.manual_seed(0)
    net = make_net("convnet3", 1, 10, 28)
    real = class_major(train)[::10]
    noisy = real + (1 - masks) * torch.randn_like(real)
    assert torch.equal(gradient_match(net, real * masks, synthetic * masks, 10),
                       gradient_match(net, noisy * masks, synthetic * masks, 10))
    assert not torch.equal(gradient_match(net, real, synthetic, 10), gradient_match(net, noisy, synthetic, 10))


def test_mask_shape_mismatch_is_a_clear_error(prepared):
    train = load_split("train")
    with pytest.raises(PipelineError, match=r"foreground masks have shape \(100, 1, 14, 14\)"):
        gradient_matching(method_run(load_params(), "masked_dc", 1, train), random_selection(train, 1, 0), 1.0,
                          MaskedTerm(torch.ones(len(train), 1, 14, 14), 1.0, None))


def test_bad_engine_params_are_clear_errors(prepared):
    set_params(prepared, **{"distill.engine.precision": "fp16"})
    with pytest.raises(PipelineError, match="'distill.engine.precision' = fp16 needs a CUDA device"):
        run_stage("distill", "--method", "dm", "--ipc", "1")
    set_params(prepared, **{"distill.engine.precision": "fp32", "distill.dc.outer_loop": "auto"})
    with pytest.raises(PipelineError, match="'distill.dc.outer_loop' is 'auto', which DC defines only for IPC 1, 10"):
        run_stage("distill", "--method", "dc", "--ipc", "2")


@pytest.mark.slow  # pretrain + dsdm: 11 s at load 4.7 on 2 cores
def test_dsdm_loss_decreases_and_output_is_decoded(prepared):
    run_stage("pretrain")
    pool = load_tensors("data/pretrained/pool.pt")
    assert len(pool["states"]) == 2 and len(pool["val_accuracy"]) == 2
    set_params(prepared, **{"distill.dsdm.iterations": 8, "distill.dsdm.augment": False})
    run_stage("distill", "--method", "dsdm", "--ipc", "1")
    out = load_tensors("data/distilled/dsdm-ipc1.pt")
    assert out["images"].shape == (40, 1, 28, 28) and out["encoded"].shape == (10, 1, 28, 28)
    assert out["labels"].tolist() == [c for c in range(10) for _ in range(4)] and len(out["source_uids"]) == 40
    train = load_split("train")
    real = class_major(train)
    init = train.normalized()[random_selection(train, 4, 0)]
    _, nets = load_pool(CPU)

    def objective(images):
        total = 0.0
        with torch.no_grad():
            for net in nets:
                proto, div, _ = dsdm_terms(net.embed(real), net.embed(images), None, 10)
                total += (proto + 50 * div).item()
        return total

    start = factor_decode(factor_encode(init, 2), 2)
    assert objective(out["images"]) < 0.9 * objective(start)


def test_resume_refuses_other_settings(prepared):
    set_params(prepared, **{"distill.dm.iterations": 2})
    run_stage("distill", "--method", "dm", "--ipc", "1")
    set_params(prepared, **{"distill.dm.lr": 0.5})
    with pytest.raises(PipelineError, match="written with other settings"):
        run_stage("distill", "--method", "dm", "--ipc", "1", "--resume")


def test_resume_refuses_a_checkpoint_made_from_other_data(prepared):
    """issue 14 item 14: the fingerprint holds hashes of the train split and the initial images, so a checkpoint of
    the same settings but other data is refused instead of continued (and its images relabelled)."""
    set_params(prepared, **{"distill.dm.iterations": 2, "distill.dm.batch_real": 2})
    run_stage("distill", "--method", "dm", "--ipc", "1")
    set_params(prepared, **{"distill.dm.iterations": 3})
    run_stage("distill", "--method", "dm", "--ipc", "1", "--resume")  # the same data: continues
    assert load_tensors("data/checkpoints/dm-ipc1.pt")["iteration"] == 3
    set_params(prepared, **{"prepare.val_per_class": 3})  # other data under the same uids' naming
    run_stage("prepare")
    set_params(prepared, **{"distill.dm.iterations": 4})
    with pytest.raises(PipelineError, match=r"dm-ipc1\.pt was made from other data \(the prepared train split"):
        run_stage("distill", "--method", "dm", "--ipc", "1", "--resume")


def test_nan_loss_stops_the_run_naming_run_and_iteration(prepared):
    """issue 14 item 11: a diverging run (here lr 1e30) stops with an error instead of writing NaN images."""
    set_params(prepared, **{"distill.dm.iterations": 5, "distill.dm.lr": 1e30, "distill.engine.checkpoint_every": 100,
                            "distill.engine.log_every": 100})
    with pytest.raises(PipelineError, match=r"distill dm-ipc1: the loss is (nan|inf) at iteration [1-4]; the run is "
                                            r"stopped .*'distill\.(dm|distribution)\.lr'"):
        run_stage("distill", "--method", "dm", "--ipc", "1")
    assert not (prepared / "data/distilled/dm-ipc1.pt").exists()
    assert not (prepared / "data/checkpoints/dm-ipc1.pt").exists()
    assert not (prepared / "outputs/plots/loss/dm-ipc1.tsv").exists()


def test_unknown_class_gradients_is_a_clear_error(prepared):
    set_params(prepared, **{"distill.dc.class_gradients": "jit"})
    with pytest.raises(PipelineError, match="'distill.dc.class_gradients' = 'jit' is not one of: loop, vmap"):
        run_stage("distill", "--method", "dc", "--ipc", "1")


def git(root, *args) -> str:
    env = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t",
           "PATH": "/usr/bin:/bin", "HOME": str(root)}
    return subprocess.run(["git", *args], cwd=root, env=env, check=True, capture_output=True, text=True).stdout


@pytest.mark.parametrize("repo", ["plain git", "dvc, no commits", "dvc, committed"])
def test_loss_log_leaves_the_repository_alone(prepared, repo):
    """The loss curve is written (DVCLive's layout) but no DVC experiment, commit, ref or dvc.yaml is made, and a
    plain Git repository is not `dvc init`ed (what DVCLive's constructor would do; in a Git repository with no
    commits it fails)."""
    from dvc.repo import Repo
    set_params(prepared, **{"distill.dm.iterations": 2})
    git(prepared, "init", "-q")
    if repo != "plain git":
        Repo.init(str(prepared))
    if repo == "dvc, committed":
        git(prepared, "add", "params.yaml", "dvc.yaml")
        git(prepared, "commit", "-qm", "base")
    refs, commits = git(prepared, "for-each-ref"), git(prepared, "rev-list", "--all")
    dvc_yaml = (prepared / "dvc.yaml").read_bytes()
    run_stage("distill", "--method", "dm", "--ipc", "1")
    assert (prepared / "outputs/distill/dm-ipc1/metrics.json").exists()
    assert git(prepared, "for-each-ref") == refs  # no refs/exps/...
    assert git(prepared, "rev-list", "--all") == commits
    assert (prepared / "dvc.yaml").read_bytes() == dvc_yaml
    assert not (prepared / "outputs/distill/dm-ipc1/dvc.yaml").exists()
    assert (prepared / ".dvc").exists() == (repo != "plain git")


def test_compiled_embedding_matches_eager_and_is_refused_for_gradient_matching(prepared):
    """`distill.engine.compile` with the aot_eager backend (dynamo + AOTAutograd, no C++ build, so it runs
    anywhere): dm's result equals the eager run's up to float rounding."""
    set_params(prepared, **{"distill.dm.iterations": 3, "distill.dm.batch_real": 4})
    run_stage("distill", "--method", "dm", "--ipc", "1")
    eager = load_tensors("data/distilled/dm-ipc1.pt")
    set_params(prepared, **{"distill.engine.compile": "aot_eager"})
    run_stage("distill", "--method", "dm", "--ipc", "1")
    compiled = load_tensors("data/distilled/dm-ipc1.pt")
    assert torch.allclose(compiled["images"], eager["images"], atol=1e-4)
    assert torch.allclose(compiled["loss"], eager["loss"], rtol=1e-4)
    with pytest.raises(PipelineError, match="'distill.engine.compile' = 'aot_eager': gradient matching .* set it to ''"):
        run_stage("distill", "--method", "dsa", "--ipc", "1")
    set_params(prepared, **{"distill.engine.compile": "turbo"})
    with pytest.raises(PipelineError, match="'distill.engine.compile'.*inductor"):
        run_stage("distill", "--method", "dm", "--ipc", "1")


@pytest.mark.parametrize("method", ["dm", "dsa"])
def test_bf16_autocast_on_cpu_runs_and_is_deterministic(prepared, method):
    set_params(prepared, **{"distill.engine.precision": "bf16", "distill.dm.iterations": 3,
                            "distill.dm.batch_real": 4})
    run_stage("distill", "--method", method, "--ipc", "1")
    first = (prepared / f"data/distilled/{method}-ipc1.pt").read_bytes()
    out = load_tensors(f"data/distilled/{method}-ipc1.pt")
    assert out["images"].dtype == torch.float32 and torch.isfinite(out["loss"]).all()
    assert out["info"]["engine"]["precision"] == "bf16"
    run_stage("distill", "--method", method, "--ipc", "1")
    assert (prepared / f"data/distilled/{method}-ipc1.pt").read_bytes() == first


def test_loss_log_and_a_resume_drops_rows_past_its_checkpoint(tmp_path, monkeypatch):
    from mmdistill.distill.engine import LossLog
    monkeypatch.chdir(tmp_path)
    curve = tmp_path / "outputs/plots/loss/dm-ipc1.tsv"
    tmp_path = tmp_path / "outputs/distill/dm-ipc1"
    log = LossLog(tmp_path, 0)
    for step, loss in enumerate([3.0, 2.5, 2.0, 1.5]):  # the interrupted run logged 4 rows, checkpointed at 2
        log.log(step, loss)
    assert curve.read_text() == "step\tloss\n0\t3.0\n1\t2.5\n2\t2.0\n3\t1.5\n"
    log = LossLog(tmp_path, 2)
    log.log(2, 2.25)
    assert curve.read_text() == "step\tloss\n0\t3.0\n1\t2.5\n2\t2.25\n"
    assert (tmp_path / "metrics.json").read_text() == '{\n    "loss": 2.25,\n    "step": 2\n}\n'
    log = LossLog(tmp_path, 0)  # a fresh run: the old curve stays until its first row (a failed run keeps it)
    assert curve.exists() and (tmp_path / "metrics.json").exists()
    log.log(0, 4.0)
    assert curve.read_text() == "step\tloss\n0\t4.0\n"


def test_compiled_leaves_the_network_alone():
    from mmdistill.distill.engine import CompiledEmbedding
    net = make_net("convnet3", 1, 10, 28)
    wrapped = CompiledEmbedding(net, "eager")
    assert "embed" not in vars(net) and wrapped.net is net
    assert {id(p) for p in wrapped.parameters()} == {id(p) for p in net.parameters()}
    x = torch.randn(2, 1, 28, 28)
    assert torch.equal(wrapped.embed(x), net.embed(x)) and torch.equal(wrapped(x), net(x))

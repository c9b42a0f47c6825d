"""dm and dsa split across torchrun processes (gloo, CPU): the same synthetic set as one process, written by rank 0
alone."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mmdistill.core.storage import PipelineError, load_tensors
from mmdistill.data.datasets import load_split
from mmdistill.distill import distributed
from tests.conftest import run_stage, set_params

SHORT = {"distill.dm.iterations": 3, "distill.dm.batch_real": 4,  # dm: 2 real images per class on each of 2 ranks
         "distill.dsa.iterations": 1, "distill.dsa.outer_loop": 2, "distill.dsa.inner_loop": 1}  # dsa: 5 classes each
# max |difference| of the normalised pixels. dm: its class means are sums in another order. dsa: none, bitwise
# (each synthetic image's gradient comes from its own class's term alone; the network training is the same on every
# process), when both runs use one thread; the loss, a sum over classes, only to float rounding
TOLERANCE = {"dm": 1e-5, "dsa": 0.0}


@pytest.fixture
def prepared(project):
    run_stage("prepare")
    set_params(project, **SHORT)
    return project


@pytest.mark.slow
@pytest.mark.parametrize("method", ["dm", "dsa"])
def test_torchrun_equals_one_process(prepared, method):
    """IPC 10 (every train image of the tiny set): 2 processes give one process's set and loss curve."""
    env = dict(os.environ, PYTHONPATH=str(prepared / "src"), OMP_NUM_THREADS="1")
    result = subprocess.run([str(Path(sys.executable).parent / "torchrun"), "--standalone", "--nproc_per_node", "2",
                             "-m", "mmdistill.stages.distill", "--method", method, "--ipc", "10"],
                            cwd=prepared, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = f"data/distilled/{method}-ipc10.pt"
    assert result.stdout.count(f"wrote {out}") == 1  # rank 0's line only
    two = load_tensors(out)
    curve = Path(f"outputs/plots/loss/{method}-ipc10.tsv").read_text()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each torchrun process (OMP_NUM_THREADS=1): the same kernels' summation order
    try:
        run_stage("distill", "--method", method, "--ipc", "10")
    finally:
        torch.set_num_threads(threads)
    one = load_tensors(out)
    assert (two["images"] - one["images"]).abs().max() <= TOLERANCE[method]
    assert torch.allclose(two["loss"], one["loss"], rtol=1e-5, atol=0)
    train = load_split("train")
    initial = train.normalized()[[train.uids.index(uid) for uid in one["source_uids"]]]
    assert (one["images"] - initial).abs().max() > 1e-3  # the images moved far beyond the tolerance
    assert len(curve.splitlines()) == len(Path(f"outputs/plots/loss/{method}-ipc10.tsv").read_text().splitlines())


def test_rank_1_writes_nothing(prepared, monkeypatch):
    """As rank 1 of 2 (the all-reduce stubbed to the sum of two identical shares), a run computes but writes no
    set, figure, loss curve or checkpoint."""
    monkeypatch.setattr(distributed, "world", lambda: (1, 2))
    monkeypatch.setattr(distributed.dist, "all_reduce", lambda tensor: tensor.mul_(2))
    set_params(prepared, **{"distill.engine.checkpoint_every": 1})
    run_stage("distill", "--method", "dm", "--ipc", "1")
    written = [p for folder in ("data/distilled", "data/checkpoints", "outputs") for p in Path(folder).rglob("*")
               if p.is_file()]
    assert written == []


@pytest.mark.parametrize("method", ["random", "kmeans"])
def test_other_methods_refuse_torchrun(prepared, monkeypatch, method):
    monkeypatch.setattr(distributed, "world", lambda: (0, 2))
    with pytest.raises(PipelineError, match=f"distill {method} under torchrun: only the distribution"):
        run_stage("distill", "--method", method, "--ipc", "1")


@pytest.mark.parametrize("method", ["masked_dm", "masked_dc"])
def test_masked_terms_refuse_torchrun(prepared, monkeypatch, method):
    """masked_dm (gradient matching as its full term by default) and masked_dc add a term on masked images that
    the class split does not cover."""
    import importlib
    module = importlib.import_module(f"mmdistill.distill.methods.{method}")
    monkeypatch.setattr(module, "load_foreground_masks", lambda uids, h, w: torch.ones(len(uids), 1, h, w))
    monkeypatch.setattr(distributed, "world", lambda: (0, 2))
    with pytest.raises(PipelineError, match=rf"distill {method}-ipc1 under torchrun: only dsa and dc"):
        run_stage("distill", "--method", method, "--ipc", "1")


def test_rank_1_matches_its_own_classes(prepared, monkeypatch):
    """As rank 1 of 2 (the all-reduce stubbed to doubling), dsa computes the gradient distance of the odd classes
    only, with their own labels."""
    monkeypatch.setattr(distributed, "world", lambda: (1, 2))
    monkeypatch.setattr(distributed.dist, "all_reduce", lambda tensor: tensor.mul_(2))
    from mmdistill.distill import gradient_matching
    seen = []
    real_match = gradient_matching.gradient_match

    def spy(net, real, syn, classes, how, labels):
        seen.append((len(real), len(syn), classes, tuple(labels)))
        return real_match(net, real, syn, classes, how, labels=labels)

    monkeypatch.setattr(gradient_matching, "gradient_match", spy)
    set_params(prepared, **{"distill.dsa.outer_loop": 1})  # one matching step, no network training
    run_stage("distill", "--method", "dsa", "--ipc", "2")
    assert seen == [(5 * 4, 5 * 2, 5, (1, 3, 5, 7, 9))]


def test_per_image_augmentation_refuses_torchrun(prepared, monkeypatch):
    """Without siamese DSA a batch's draws depend on its size, so a rank's share would not be augmented as in the
    whole batch."""
    monkeypatch.setattr(distributed, "world", lambda: (0, 2))
    set_params(prepared, **{"distill.distribution.siamese": False})
    with pytest.raises(PipelineError, match="distill dm-ipc1 under torchrun: only dm with siamese DSA"):
        run_stage("distill", "--method", "dm", "--ipc", "1")


def test_real_batch_must_split_into_the_processes(prepared, monkeypatch):
    monkeypatch.setattr(distributed, "world", lambda: (0, 3))
    with pytest.raises(PipelineError, match=r"param 'distill\.dm\.batch_real' = 4 does not split into the "
                                            r"3 torchrun processes"):
        run_stage("distill", "--method", "dm", "--ipc", "1")


def test_cuda_processes_take_the_gpu_of_their_local_rank(monkeypatch):
    """With device cuda under torchrun, each process joins NCCL on the GPU of its LOCAL_RANK, and a rank beyond the
    node's GPUs is a one-line error. torch's process-group and CUDA calls are stubbed: this machine has no GPU (the
    NCCL run itself is not tested here)."""
    calls = []
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(distributed.dist, "is_initialized", lambda: False)
    monkeypatch.setattr(distributed.dist, "init_process_group", lambda backend, **kw: calls.append((backend, kw)))
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", lambda i: calls.append(("set_device", i)))
    assert distributed.start(torch.device("cuda")) == torch.device("cuda", 1)
    assert calls == [("set_device", 1), ("nccl", {"device_id": torch.device("cuda", 1)})]
    assert distributed.start(torch.device("cpu")) == torch.device("cpu") and calls[-1] == ("gloo", {})
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(PipelineError, match=r"LOCAL_RANK 1 but this node has 1 GPU\(s\): use --nproc_per_node 1"):
        distributed.start(torch.device("cuda"))
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert distributed.start(torch.device("cuda")) == torch.device("cuda") and len(calls) == 3

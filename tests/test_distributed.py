"""dm split across torchrun processes (gloo, CPU): the same synthetic set as one process, written by rank 0 alone."""
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

DM = {"distill.dm.iterations": 3, "distill.dm.batch_real": 4}  # 2 real images per class on each of 2 ranks
TOLERANCE = 1e-5  # max |difference| of the normalised pixels: the sums of class means in another order


@pytest.fixture
def prepared(project):
    run_stage("prepare")
    set_params(project, **DM)
    return project


@pytest.mark.slow
def test_dm_under_torchrun_equals_one_process(prepared):
    env = dict(os.environ, PYTHONPATH=str(prepared / "src"), OMP_NUM_THREADS="1")
    result = subprocess.run([str(Path(sys.executable).parent / "torchrun"), "--standalone", "--nproc_per_node", "2",
                             "-m", "mmdistill.stages.distill", "--method", "dm", "--ipc", "2"],
                            cwd=prepared, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert result.stdout.count("wrote data/distilled/dm-ipc2.pt") == 1  # rank 0's line only
    two = load_tensors("data/distilled/dm-ipc2.pt")
    curve = Path("outputs/plots/loss/dm-ipc2.tsv").read_text()
    run_stage("distill", "--method", "dm", "--ipc", "2")
    one = load_tensors("data/distilled/dm-ipc2.pt")
    assert (two["images"] - one["images"]).abs().max() <= TOLERANCE
    assert torch.allclose(two["loss"], one["loss"], rtol=1e-5, atol=0)
    train = load_split("train")
    initial = train.normalized()[[train.uids.index(uid) for uid in one["source_uids"]]]
    assert (one["images"] - initial).abs().max() > 100 * TOLERANCE  # the images moved far beyond the tolerance
    assert len(curve.splitlines()) == len(Path("outputs/plots/loss/dm-ipc2.tsv").read_text().splitlines())


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


@pytest.mark.parametrize("method", ["masked_dm", "dc", "random"])
def test_other_methods_refuse_torchrun(prepared, monkeypatch, method):
    monkeypatch.setattr(distributed, "world", lambda: (0, 2))
    with pytest.raises(PipelineError, match=f"distill {method} under torchrun: only the distribution family"):
        run_stage("distill", "--method", method, "--ipc", "1")


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

"""Issue 15 "Must show": `--resume` after a kill of stage buffer and of an mttvl run (stage distill_pairs) writes the
same bytes as an uninterrupted run. tests/test_retrieval.py covers a kill right after a checkpoint (an exception
from the on_epoch / on_iteration hook); here the stage process is killed for real (SIGKILL of `python -m
mmdistill.stages.buffer` between an epoch's shard and its checkpoint, and as the next expert starts) and an mttvl
run is stopped between two checkpoints, after its loss curve has logged an iteration that the checkpoint does not
hold."""
from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import run_stage, set_params
from tests.test_prepare_text import flickr_layout, karpathy_params
from tests.test_retrieval import HashEncoder


def digests(root: Path) -> dict:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def pairs_project(project, tmp_path, monkeypatch) -> Path:
    """The tiny Karpathy layout prepared and embedded (stand-in text encoder), ready for stage buffer."""
    from mmdistill.embed import features
    monkeypatch.setitem(features.TEXT_ENCODERS, "minilm", lambda params, device: HashEncoder())
    set_params(project, **karpathy_params(flickr_layout(tmp_path / "flickr")), **{
        "imagetext.stages": ["on"], "imagetext.model.dim": 8, "imagetext.buffer.experts": 2,
        "imagetext.buffer.expert_epochs": 3, "imagetext.buffer.batch_size": 2})
    run_stage("prepare")
    run_stage("embed_pairs")
    return project


# `python -m mmdistill.stages.buffer` that SIGKILLs itself just before its KILL_AT-th file write (data/buffer shard or
# checkpoint, in the order train_experts writes them): a real kill at a chosen point, not at a lucky moment
KILLED_BUFFER = """
import os, runpy, signal, sys
import mmdistill.distill.experts as experts
real, calls = experts.save_tensors, [0]
def save_tensors(*args, **kwargs):
    calls[0] += 1
    if calls[0] == {kill_at}:
        os.kill(os.getpid(), signal.SIGKILL)
    return real(*args, **kwargs)
experts.save_tensors = save_tensors
sys.argv = ["mmdistill.stages.buffer"]
runpy.run_module("mmdistill.stages.buffer", run_name="__main__")
"""


# writes per expert (3 epochs): shard 0, then shard 1, checkpoint 1, shard 2, checkpoint 2, shard 3, checkpoint 3
@pytest.mark.parametrize("kill_at", [
    pytest.param(5, id="expert0-epoch2-shard-written-checkpoint-not"),   # resume redoes epoch 2 over its shard
    pytest.param(9, id="expert1-first-epoch"),                          # expert 0 done, expert 1 starts over
])
@pytest.mark.slow  # a stage subprocess (~4 s on idle cores)
def test_buffer_resumes_after_sigkill_to_the_same_bytes(pairs_project, kill_at):
    run_stage("buffer")
    whole = digests(pairs_project / "data/buffer")
    assert len(whole) == 2 * 4 + 1                                  # 2 experts x (initial + 3 epochs), record.json
    timing = json.loads((pairs_project / "outputs/timings/buffer.json").read_text())
    assert timing["seconds_per_expert_epoch"] > 0 and timing["experts"] == 2  # measured outside the cached output
    env = dict(os.environ, PYTHONPATH=str(pairs_project / "src"), OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-c", KILLED_BUFFER.format(kill_at=kill_at)], cwd=pairs_project, env=env,
                         capture_output=True, text=True)
    assert out.returncode == -signal.SIGKILL, out.stderr
    assert len(digests(pairs_project / "data/buffer")) < len(whole)  # cut short: shards are missing
    run_stage("buffer", "--resume")
    assert digests(pairs_project / "data/buffer") == whole


def test_mttvl_resumes_between_checkpoints_to_the_same_bytes(pairs_project):
    """checkpoint_every 2, stopped after iteration 3: the resumed run starts again at iteration 2 (the checkpoint),
    drops the loss row of the lost iteration 3 from the curve, and ends with the uninterrupted run's bytes."""
    from mmdistill.core.config import load_params
    from mmdistill.stages.distill_pairs import distill_pairs
    run_stage("buffer")
    set_params(pairs_project, **{"imagetext.distill_sets": ["mttvl-3"], "imagetext.mttvl.iterations": 4,
                                 "imagetext.mttvl.expert_epochs": 1, "imagetext.mttvl.max_start_epoch": 2,
                                 "imagetext.mttvl.syn_steps": 2, "imagetext.mttvl.checkpoint_every": 2,
                                 "imagetext.mttvl.lr_images": 0.1, "imagetext.mttvl.lr_texts": 0.1})
    outputs = [Path("data/distilled_pairs/mttvl-3.pt"), Path("outputs/plots/loss/mttvl-3.tsv"),
               Path("outputs/distill/mttvl-3/metrics.json")]
    run_stage("distill_pairs", "--pairs", "mttvl-3")
    whole = [p.read_bytes() for p in outputs]
    for p in outputs:
        p.unlink()
    Path("data/checkpoints/mttvl-3.pt").unlink()

    class Killed(Exception):
        pass

    def kill(done):
        if done == 3:
            raise Killed
    with pytest.raises(Killed):
        distill_pairs("mttvl-3", load_params(), resume=False, on_iteration=kill)
    assert len(outputs[1].read_text().splitlines()) == 1 + 3        # header + iterations 0, 1, 2 logged
    assert not outputs[0].exists()
    run_stage("distill_pairs", "--pairs", "mttvl-3", "--resume")
    assert [p.read_bytes() for p in outputs] == whole

"""End to end through DVC on the tiny dataset: repro, caching, partial re-runs, push/pull to a colleague."""
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import set_params

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent
ENV = dict(os.environ, PATH=f"{BIN}:{os.environ['PATH']}", GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t",
           GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@t", DVC_NO_ANALYTICS="1")


def sh(cwd, *cmd) -> str:
    result = subprocess.run(cmd, cwd=cwd, env=dict(ENV, PYTHONPATH=str(Path(cwd) / "src")), capture_output=True, text=True)
    assert result.returncode == 0, f"{' '.join(cmd)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result.stdout + result.stderr


def ran(output: str) -> set:
    return set(re.findall(r"Running stage '([^']+)'", output))


def test_dvc_pipeline_end_to_end(project, tmp_path):
    (project / ".gitignore").write_text("/data/\n__pycache__/\n")
    sh(project, "git", "init", "-q")
    sh(project, "dvc", "init", "-q")
    out = sh(project, "dvc", "repro")
    stages = {"prepare", "tag", "ground", "caption", "describe", "embed_image", "embed_text", "forgetting", "select",
              "align", "prototypes", "pretrain", "vae", "report", "evaluate_full", "caption_head", "annotate_test"}
    runs = {f"{s}@{m}-{k}" for s in ("distill", "evaluate") for m in ("random", "kmeans", "dm", "masked_dm")
            for k in (1, 2)}
    assert ran(out) == stages | runs

    metrics = json.loads(sh(project, "dvc", "metrics", "show", "--json"))
    shown = {k: v for k, v in next(iter(metrics.values()))["data"].items()
              if not k.endswith(("align.json", "vae.json", "caption_head.json"))}
    # one row per (method, IPC) and the upper bound, measured numbers only: accuracies by network
    assert len(shown) == 9 and all(v["data"] == {"convnet3": {k: v["data"]["convnet3"][k] for k in (
        "test_accuracy_mean", "test_accuracy_std", "val_accuracy_mean", "val_accuracy_std")}} for v in shown.values())
    plots = json.loads(sh(project, "dvc", "plots", "show", "--json", "accuracy vs IPC"))
    points = plots["data"]["accuracy vs IPC"][0]["content"]["data"]["values"]
    assert {(p["field"], p["ipc"]) for p in points} == {(m, k) for m in ("random", "kmeans", "dm", "masked_dm")
                                                        for k in (1, 2)}
    assert "| masked_dm | 2 |" in (project / "outputs/report.md").read_text()

    assert ran(sh(project, "dvc", "repro")) == set()  # everything cached

    set_params(project, **{"evaluate.repeats": 1})
    assert ran(sh(project, "dvc", "repro")) == {r for r in runs if r.startswith("evaluate")} | {"report"}

    set_params(project, **{"caption.image_template": "an image of a {class_name}"})
    assert ran(sh(project, "dvc", "repro")) == {"caption", "describe", "embed_text", "align", "prototypes", "report",
                                                "caption_head", "annotate_test"}

    # a colleague clones, pulls from the shared remote and has everything without recomputing
    remote = tmp_path / "remote"
    sh(project, "dvc", "remote", "add", "-d", "shared", str(remote))
    sh(project, "git", "add", "-A")
    sh(project, "git", "commit", "-qm", "pipeline")
    sh(project, "dvc", "push")
    clone = tmp_path / "clone"
    sh(tmp_path, "git", "clone", "-q", str(project), str(clone))
    sh(clone, "dvc", "pull")
    assert (clone / "data/annotations/captions.parquet").read_bytes() == \
        (project / "data/annotations/captions.parquet").read_bytes()
    assert "up to date" in sh(clone, "dvc", "status")
    assert ran(sh(clone, "dvc", "repro")) == set()
    shutil.rmtree(clone)

"""End to end through DVC on the tiny dataset: repro, caching, partial re-runs, push/pull to a colleague."""
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mmdistill.devtools.closure import closure, command_module
from mmdistill.devtools.pipeline import resolved_stages
from tests.conftest import set_params

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent
ENV = dict(os.environ, PATH=f"{BIN}:{os.environ['PATH']}", GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t",
           GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@t", DVC_NO_ANALYTICS="1")


GROUPS = {"selection": ["random", "kmeans"], "distribution": ["dm"], "masked": ["masked_dm"]}  # tiny_params


def sh(cwd, *cmd) -> str:
    env = dict(ENV, PYTHONPATH=str(Path(cwd) / "src"))  # the project copy's code, not the installed checkout's
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    assert result.returncode == 0, f"{' '.join(cmd)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result.stdout + result.stderr


def ran(output: str) -> set:
    return set(re.findall(r"Running stage '([^']+)'", output))


TOY_METHOD = '''"""toy: dm's loss at half weight (a test of adding a method)."""
from mmdistill.distill.distribution_matching import distribution_matching
from mmdistill.distill.initial import random_selection
from mmdistill.distill.methods import Method, Synthetic


def run(run):
    init = random_selection(run.train, run.ipc, run.seed)
    images, history, outputs = distribution_matching(run, init, full_weight=0.5, masked=None)
    return Synthetic(images, init, history, outputs)


METHOD = Method("toy", group="distribution", family="distribution", keys={}, run=run, engine=True)
'''


def stage_names(project) -> set:
    return {s.name for s in resolved_stages(project)}


def stages_importing(project, module: str) -> set:
    """The stages whose command's import closure contains `module` (a path under src/)."""
    return {s.name for s in resolved_stages(project)
            if command_module(s.cmd) and module in closure(command_module(s.cmd), project / "src")}


def stale(project) -> set:
    return set(json.loads(sh(project, "dvc", "status", "--json")))


def test_dvc_pipeline_end_to_end(project, tmp_path):
    (project / ".gitignore").write_text("/data/\n__pycache__/\n")
    sh(project, "git", "init", "-q")
    sh(project, "dvc", "init", "-q")
    out = sh(project, "dvc", "repro")
    everything = stage_names(project)
    runs = {f"{s}_{group}@{m}-{k}" for s in ("distill", "evaluate") for group, methods in GROUPS.items()
            for m in methods for k in (1, 2)}
    assert ran(out) == everything == {"prepare", "tag", "ground", "caption", "describe", "embed_image", "embed_text",
                                      "forgetting", "select", "evaluate_full", "report"} | runs

    metrics = json.loads(sh(project, "dvc", "metrics", "show", "--json"))
    shown = next(iter(metrics.values()))["data"]
    # one row per (method, IPC) and the upper bound, measured numbers only: accuracies by network
    assert len(shown) == 9 and all(v["data"] == {"convnet3": {k: v["data"]["convnet3"][k] for k in (
        "test_accuracy_mean", "test_accuracy_std", "val_accuracy_mean", "val_accuracy_std")}} for v in shown.values())
    plots = json.loads(sh(project, "dvc", "plots", "show", "--json"))
    assert not plots.get("errors")
    points = {name: [(p["ipc"], p["test_accuracy"]) for p in plot[0]["content"]["data"]["values"]]
              for name, plot in plots["data"].items() if name.startswith("outputs/plots/accuracy/")}
    assert {Path(name).stem for name in points} == {"random", "kmeans", "dm", "masked_dm"}
    assert all([ipc for ipc, _ in series] == [1, 2] for series in points.values())
    curves = {Path(name).stem for name in plots["data"] if name.startswith("outputs/plots/loss/")}
    assert curves == {f"{m}-ipc{k}" for m in ("dm", "masked_dm") for k in (1, 2)}
    assert "| masked_dm (full_term dc, masked_term pairs) | 2 |" in (project / "outputs/report.md").read_text()

    assert ran(sh(project, "dvc", "repro")) == set()  # everything cached

    # a code change re-runs exactly the stages whose import closure holds the module
    for module in ("src/mmdistill/core/storage.py", "src/mmdistill/nn/augment.py", "src/mmdistill/distill/losses.py",
                   "src/mmdistill/annotate/grounding.py"):
        path = project / module
        original = path.read_bytes()
        path.write_bytes(original + b"\n# touched\n")
        expected = stages_importing(project, module)
        assert expected and stale(project) == expected, module
        path.write_bytes(original)
    assert stale(project) == set()

    # an evaluation param makes the evaluations and the report stale, no distillation (re-running them: a minute)
    params = (project / "params.yaml").read_bytes()
    set_params(project, **{"evaluate.repeats": 1})
    assert stale(project) == {r for r in runs if r.startswith("evaluate")} | {"report"}
    (project / "params.yaml").write_bytes(params)
    assert stale(project) == set()

    set_params(project, **{"caption.image_template": "an image of a {class_name}"})
    assert ran(sh(project, "dvc", "repro")) == {"caption", "describe", "embed_text", "report"}

    # the masks change: only the masked method's stages re-run downstream of the annotations
    set_params(project, **{"ground.min_area": 0.05})
    out = ran(sh(project, "dvc", "repro"))
    annotation = {"ground", "caption", "describe", "embed_image", "embed_text", "report"}  # unchanged outputs stop it
    masked = {r for r in runs if "_masked@" in r}  # evaluate re-runs only where the distilled set changed
    assert "ground" in out and {r for r in masked if r.startswith("distill")} <= out - annotation <= masked

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

    # a new method is one module and one registry line (+ its place in a group and its params block)
    (project / "src/mmdistill/distill/methods/toy.py").write_text(TOY_METHOD)
    registry = project / "src/mmdistill/distill/methods/__init__.py"
    line = '    "dm": "mmdistill.distill.methods.dm",\n'
    registry.write_text(registry.read_text().replace(line, line + '    "toy": "mmdistill.distill.methods.toy",\n'))
    set_params(project, **{"distill.methods.distribution": ["dm", "toy"], "distill.toy": {}})
    toy = {f"{s}_distribution@toy-{k}" for s in ("distill", "evaluate") for k in (1, 2)}
    assert toy <= stage_names(project)
    registry_users = stages_importing(project, "src/mmdistill/distill/methods/__init__.py")
    assert stale(project) == toy | registry_users  # the others would re-run, to the same bytes: run the new ones
    new_first = sorted(toy, key=lambda name: not name.startswith("distill"))
    out = sh(project, "dvc", "repro", "--single-item", *new_first, "report")
    assert ran(out) == toy | {"report"} and "| toy | 2 |" in (project / "outputs/report.md").read_text()

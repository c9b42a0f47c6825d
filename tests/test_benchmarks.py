"""The benchmark runner's plan (--dry-run) and stamp, through its command line: no test imports benchmarks/."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
CONFIG = {
    "description": "a test plan",
    "kind": "accuracy",
    "set": {"evaluate.epochs": 3, "distill.dm.iterations": 5},
    "needs": ["prepare"],
    "repeats": 2,
    "rows": ["random:1", {"row": "dm:10", "set": {"distill.dm.batch_real": 8}}],
    "variants": {"fp32": {}, "bf16": {"set": {"distill.engine.precision": "bf16"}, "rows": ["dm:1"]}},
}


def runner(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    out = subprocess.run([sys.executable, "-m", "benchmarks.run", *args], cwd=REPO, capture_output=True, text=True)
    if check:
        assert out.returncode == 0, out.stderr
    return out


def dry_run(tmp_path: Path, config: dict) -> dict:
    path = tmp_path / "plan.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return json.loads(runner(str(path), "--dry-run", "--json").stdout)


def test_dry_run_lists_the_exact_commands(tmp_path):
    plan = dry_run(tmp_path, CONFIG)
    seed = yaml.safe_load((REPO / "params.yaml").read_text())["seed"]
    shown = [(s["variant"], s["seed"], s["step"], s.get("command") or s["set"]) for s in plan["steps"]]
    base = {"evaluate.epochs": 3, "distill.dm.iterations": 5}
    expected = []
    for variant, extra, rows in (("fp32", {}, ["random:1", "dm:10"]),
                                 ("bf16", {"distill.engine.precision": "bf16"}, ["dm:1"])):
        for s in (seed, seed + 1):
            sets = {**base, **extra, "seed": s}
            expected += [(variant, s, "params", sets), (variant, s, "needs", "python -m dvc repro prepare")]
            for row in rows:
                method, ipc = row.split(":")
                row_set = {"distill.dm.batch_real": 8} if row == "dm:10" else {}
                if row_set:
                    expected.append((variant, s, "params", {**sets, **row_set}))
                args = f"--method {method} --ipc {ipc}"
                expected += [(variant, s, "distill", f"python -m mmdistill.stages.distill {args}"),
                             (variant, s, "evaluate", f"python -m mmdistill.stages.evaluate {args}")]
                if row_set:
                    expected.append((variant, s, "params", sets))
    assert shown == expected


def test_retrieval_plan_makes_then_evaluates_each_pair_set(tmp_path):
    config = {"description": "r", "kind": "retrieval", "needs": ["buffer@on"],
              "set": {"imagetext.stages": ["on"], "imagetext.mttvl.iterations": 7},
              "rows": ["full", "mttvl-10", {"row": "herding-10", "set": {"embed.batch_size": 8}}]}
    plan = dry_run(tmp_path, config)
    shown = [(s["step"], s.get("command") or s["set"].get("embed.batch_size")) for s in plan["steps"]]
    stage = "python -m mmdistill.stages."
    assert shown == [("params", None), ("needs", "python -m dvc repro buffer@on"),
                     ("evaluate", f"{stage}evaluate_retrieval --pairs full"),
                     ("distill", f"{stage}distill_pairs --pairs mttvl-10"),
                     ("evaluate", f"{stage}evaluate_retrieval --pairs mttvl-10"),
                     ("params", 8), ("distill", f"{stage}select_pairs --pairs herding-10"),
                     ("evaluate", f"{stage}evaluate_retrieval --pairs herding-10"), ("params", None)]
    assert plan["steps"][3]["iterations"] == 7                    # seconds per mttvl iteration = wall / 7
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({**config, "rows": ["kmeans-10"]}, sort_keys=False))
    out = runner(str(path), "--dry-run", check=False)
    assert out.returncode != 0 and "row 'kmeans-10': expected a pair set" in out.stderr


def test_retrieval_timing_plan_makes_the_sets_only(tmp_path):
    """evaluate: false (kind retrieval): distill_pairs / select_pairs without evaluate_retrieval; each mttvl step
    carries its mttvl settings without the iteration count, the key the per-iteration fit groups runs by."""
    config = {"description": "t", "kind": "retrieval", "evaluate": False, "set": {"imagetext.stages": ["on"]},
              "variants": {"it1": {"set": {"imagetext.mttvl.iterations": 1}},
                           "it4": {"set": {"imagetext.mttvl.iterations": 4}}},
              "rows": ["mttvl-10", "herding-10"]}
    steps = [s for s in dry_run(tmp_path, config)["steps"] if s["step"] != "params"]
    assert [(s["variant"], s["command"].split()[2]) for s in steps] == [
        (v, f"mmdistill.stages.{stage}") for v in ("it1", "it4") for stage in ("distill_pairs", "select_pairs")]
    mttvl = [s for s in steps if "distill_pairs" in s["command"]]
    assert [s["iterations"] for s in mttvl] == [1, 4] and mttvl[0]["mttvl"] == mttvl[1]["mttvl"]
    assert "iterations" not in mttvl[0]["mttvl"] and mttvl[0]["mttvl"]["syn_steps"] > 0


@pytest.mark.slow
def test_distill_only_and_speed_plans(tmp_path):
    plan = dry_run(tmp_path, {"description": "d", "kind": "accuracy", "evaluate": False, "rows": ["dm:10"]})
    assert [s["step"] for s in plan["steps"]] == ["params", "distill"]
    spec = {"rounds": 1}
    plan = dry_run(tmp_path, {"description": "s", "kind": "speed", "needs": ["prepare"], "measure": spec})
    measure = plan["steps"][-1]
    assert measure["command"] == ("python -m benchmarks.measure_speed --spec speed-spec.json "
                                  "--out speed-result.json")
    assert measure["spec"] == spec


def test_a_variant_with_processes_distils_under_torchrun(tmp_path):
    config = {"description": "t", "kind": "accuracy", "evaluate": False, "rows": ["dsa:10"],
              "variants": {"one": {}, "two": {"processes": 2}}}
    plan = dry_run(tmp_path, config)
    assert [(s["variant"], s["command"]) for s in plan["steps"] if s["step"] == "distill"] == [
        ("one", "python -m mmdistill.stages.distill --method dsa --ipc 10"),
        ("two", "torchrun --standalone --nproc_per_node 2 -m mmdistill.stages.distill --method dsa --ipc 10")]
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({**config, "variants": {"two": {"processes": 0}}}, sort_keys=False))
    out = runner(str(path), "--dry-run", check=False)
    assert out.returncode != 0 and "variant 'two': processes must be an integer >= 1, got 0" in out.stderr


def test_stamp(tmp_path):
    plan = dry_run(tmp_path, CONFIG)
    stamp = plan["stamp"]
    assert stamp["command"] == f"python -m benchmarks.run {tmp_path / 'plan.yaml'} --dry-run --json"
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True).stdout
    assert stamp["commit"] == (head.strip() or "unknown (not a git checkout)")
    assert isinstance(stamp["uncommitted_changes"], bool)
    assert stamp["machine"]["cpu"] and stamp["machine"]["cores"] == os.cpu_count()
    assert isinstance(stamp["machine"]["gpus"], list)
    assert len(stamp["load_start"]) == 3 and all(x >= 0 for x in stamp["load_start"])
    assert stamp["versions"]["python"] and stamp["versions"]["dvc"]
    started = datetime.fromisoformat(stamp["started"])
    assert abs((datetime.now(timezone.utc) - started).total_seconds()) < 300
    assert stamp["finished"] is None and stamp["load_end"] is None  # a dry run finishes nothing


@pytest.mark.slow  # one runner subprocess per shipped config (~30 s)
def test_every_shipped_config_is_valid():
    """Every config parses, its param keys exist in params.yaml and its `needs` are dvc.yaml stages."""
    names = sorted(p.stem for p in (REPO / "benchmarks" / "configs").glob("*.yaml"))
    assert names
    checked = [line.partition(":")[0] for line in runner("--check").stdout.splitlines()]
    assert checked == names


@pytest.mark.parametrize("change, message", [
    ({"set": {"distill.dm.iteratons": 5}}, "unknown param 'distill.dm.iteratons'"),
    ({"set": {"distill.nosuch.iterations": 5}}, "set 'distill.nosuch.iterations': no such key in params.yaml"),
    ({"needs": ["prepar"]}, "needs 'prepar': no such stage in dvc.yaml"),
    ({"rows": ["dm"]}, "row 'dm': expected METHOD:IPC"),
    ({"repeat": 2}, "unknown keys ['repeat']"),
    ({"kind": "accuracyy"}, "kind must be one of accuracy, speed, retrieval"),
])
def test_bad_configs_are_refused_before_anything_runs(tmp_path, change, message):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({**CONFIG, **change}, sort_keys=False))
    out = runner(str(path), "--dry-run", check=False)
    assert out.returncode != 0 and message in out.stderr


def test_no_test_imports_benchmarks():
    pattern = re.compile(r"^\s*(from|import)\s+benchmarks\b", re.MULTILINE)
    offenders = [p.name for p in (REPO / "tests").glob("*.py") if pattern.search(p.read_text())]
    assert offenders == []


@pytest.mark.slow  # a real run through DVC on the tiny dataset: dvc repro prepare, distill, evaluate (~9 s)
def test_a_real_run_writes_stamped_results(tmp_path, fashion_dir):
    config = {"description": "tiny real run", "kind": "accuracy",
              "set": {"device": "cpu", "prepare.source": str(fashion_dir), "prepare.val_per_class": 2,
                      "prepare.max_train_per_class": 0, "evaluate.epochs": 1, "evaluate.repeats": 1,
                      "evaluate.compile": ""},  # a cold inductor compile is most of a tiny run
              "needs": ["prepare"], "rows": ["random:1"]}
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    out = tmp_path / "results"
    runner(str(path), "--workdir", str(tmp_path / "copy"), "--cache", str(tmp_path / "cache"), "--out-dir", str(out))
    record = json.loads((out / "tiny.json").read_text())
    assert record["status"] == "complete"
    assert record["stamp"]["finished"] and len(record["stamp"]["load_end"]) == 3
    evaluate = [s for s in record["steps"] if s["step"] == "evaluate"]
    assert len(evaluate) == 1 and evaluate[0]["metrics_file"] == "random-ipc1.json"
    accuracy = evaluate[0]["metrics"]["convnet3"]["test_accuracy_mean"]
    text = (out / "tiny.md").read_text()
    assert "do not edit, rerun it" in text and f"| random | 1 | {accuracy:.2f} |" in text
    assert record["stamp"]["commit"] in text


def test_fresh_clone_refuses_an_existing_workdir_before_cloning(tmp_path):
    workdir, out_dir = tmp_path / "clone", tmp_path / "results"
    workdir.mkdir()
    (workdir / "kept.txt").write_text("mine")
    out = subprocess.run([sys.executable, "-m", "benchmarks.fresh_clone", "--workdir", str(workdir),
                          "--out-dir", str(out_dir)], cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines()[-1].endswith(f"--workdir {workdir} exists; name a path that does not, "
                                                        "or remove it")
    assert "Traceback" not in out.stderr
    assert [p.name for p in workdir.iterdir()] == ["kept.txt"] and not out_dir.exists()

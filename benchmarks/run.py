"""The one benchmark runner: a named configuration -> a generated result file.

    python -m benchmarks.run NAME [--dry-run] [--json] [--keep] [--workdir DIR] [--cache DIR] [--out-dir DIR]
    python -m benchmarks.run --list
    python -m benchmarks.run --check [NAME]      # validate and plan every configuration (or NAME), run nothing

NAME is benchmarks/configs/NAME.yaml (or a path to a YAML file of the same form). The runner
  1. copies the project (the files git tracks or would track, as they are in the working tree) into a
     temporary directory whose DVC cache is this project's (`--cache`), so that a stage already run
     with the same code and params is checked out from the run-cache instead of recomputed;
  2. per variant and repeat, writes that copy's params.yaml (params.yaml + `set` + the variant's set +
     the repeat's seed) and runs `dvc repro` of the stages the configuration `needs`;
  3. per row, runs the stage entry points in subprocesses there (`python -m mmdistill.stages.distill
     --method M --ipc K`, then `... evaluate ...`; kind `speed`: `python -m benchmarks.measure_speed`)
     and reads the metrics file the row wrote;
  4. writes benchmarks/results/NAME.md and NAME.json after every row, stamped with the command, the
     commit, the machine, its load average at the start and end, and the date.
It imports nothing from mmdistill: what is measured is the pipeline's own commands. The result files are
generated; rerun the configuration instead of editing them. `--dry-run` prints the stamp and the exact
commands and writes nothing (`--json`: as JSON).

Configuration keys (unknown keys are an error; docs/benchmarks.md has examples):
  description  one line: the result file's title (required)
  kind         accuracy | speed (required)
  set          {dotted.param: value} laid over params.yaml; every key must already exist in params.yaml
  needs        [stage]: DVC stages of dvc.yaml reproduced (with their upstream) before the rows
  variants     {name: {set: {...}, rows: [...], processes: N}}: each runs everything again with its sets on top
               of `set` (and its own rows instead of `rows` when given); none = one variant, `base`. `processes`
               N > 1 (kind accuracy): its distill commands run under `torchrun --standalone --nproc_per_node N`
  repeats      N >= 1: everything runs with seed = params.yaml's seed + 0, ..., N - 1 (none = 1)
  kind accuracy:
    rows       [METHOD:IPC, or {row: METHOD:IPC, set: {...}}]: distill, then evaluate (METHOD-latent: the latent
               run, --latent); a row's sets apply
               to its own commands only (after `needs` ran)
    evaluate   false = distill only (a timing row: the table adds the iterations the run logged, from its loss
               curve, and wall s / iteration, start-up included; and where the same row and process count ran
               at two iteration counts, the marginal s / iteration = the wall difference / the iterations')
    metrics    fnmatch patterns over the dotted numeric keys of the metrics file, shown as columns
               (none = NET.test_accuracy_mean, NET.test_accuracy_std, NET.val_accuracy_mean for each network)
  kind speed:
    measure    the spec of benchmarks/measure_speed.py (rounds, iterations, images, losses, ...)
  kind retrieval (the image-text track; `set` turns it on: imagetext.stages [on], prepare.dataset ...):
    rows       [PAIR_SET, or {row: PAIR_SET, set: {...}}]: full | random-N | mttvl-N (distill_pairs, then evaluated)
               | herding-N | kcenter-N | forgetting-N | pds-N (select_pairs, then evaluated) | pds_unclip-N
               (synthesize_pairs; needs [unclip_decoder@on]), each evaluated by
               `python -m mmdistill.stages.evaluate_retrieval --pairs PAIR_SET`; needs [buffer@on] for mttvl
    evaluate   false = make the sets only (a timing run: no evaluate_retrieval); none = true
    metrics    as for accuracy (none = test TR/IR R@1/5/10 means and the R@1 stds of each image encoder)
  The retrieval tables add the seconds per mttvl iteration (distill_pairs' wall time over its iterations, start-up
  included) and the seconds per expert epoch that stage buffer measured (outputs/timings/buffer.json, when `needs`
  ran it). Where the same mttvl row ran at two or more iteration counts with otherwise equal imagetext.mttvl settings
  (variants that change only imagetext.mttvl.iterations), a second table fits wall = start-up + iterations x s per
  iteration (least squares): the loop's own cost, start-up (interpreter, imports, loading the buffer) apart.
"""
from __future__ import annotations

import argparse
import copy
import fnmatch
import importlib.metadata
import json
import os
import platform
import re
import resource
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "benchmarks" / "configs"
RESULTS = ROOT / "benchmarks" / "results"
KINDS = ("accuracy", "speed", "retrieval")
COMMON_KEYS = {"description", "kind", "set", "needs", "variants", "repeats"}
KIND_KEYS = {"accuracy": {"rows", "evaluate", "metrics"}, "speed": {"measure"}, "retrieval": {"rows", "evaluate", "metrics"}}
DEFAULT_METRICS = ["*.test_accuracy_mean", "*.test_accuracy_std", "*.val_accuracy_mean"]  # per network
RETRIEVAL_METRICS = [f"*.test_{side}_r{k}_mean" for side in ("tr", "ir") for k in (1, 5, 10)] + \
    ["*.test_tr_r1_std", "*.test_ir_r1_std"]                                      # per image encoder
PAIR_SET = re.compile(  # as mmdistill.data.pairs
    r"^(full|(random|mttvl|herding|kcenter|forgetting|pds|pds_unclip)-([1-9][0-9]*))$")
BUFFER_TIMINGS = "outputs/timings/buffer.json"  # stage buffer's timing (read, never written)
DIFFUSION_RECORDS = "data/diffusion/*/record.json"  # stage finetune_diffusion's records (read, never written)
DIFFUSION_TIMINGS = "outputs/timings/diffusion"  # and their timings, {method}.json (read, never written)
METRICS_DIR = "outputs/metrics"  # where the evaluate stage writes its metrics files (read, never written)


class ConfigError(SystemExit):
    def __init__(self, where: str, message: str):
        super().__init__(f"benchmark config {where}: {message}")


# ----------------------------------------------------------------------------------------------- config

def config_path(name: str) -> Path:
    path = Path(name)
    if path.suffix in (".yaml", ".yml") and path.exists():
        return path.resolve()
    path = CONFIGS / f"{name}.yaml"
    if not path.exists():
        raise SystemExit(f"no benchmark config {name!r}: expected {path} (or a path to a .yaml); "
                         f"known: {', '.join(known_configs()) or 'none'}")
    return path


def known_configs() -> list[str]:
    return sorted(p.stem for p in CONFIGS.glob("*.yaml"))


def lookup(tree, dotted: str):
    """The value at `dotted` in a nested mapping; KeyError when any part is missing."""
    node = tree
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            raise KeyError(dotted)
        node = node[part]
    return node


def apply_sets(params: dict, sets: dict, where: str) -> dict:
    """A copy of `params` with every dotted key of `sets` set; its parent must be a mapping of params.yaml (a
    method's block may override its family's keys: `distill.dm.iterations`). `check_params` validates the result."""
    params = copy.deepcopy(params)
    for key, value in sets.items():
        try:
            parent = lookup(params, key.rpartition(".")[0]) if "." in key else params
        except KeyError:
            raise ConfigError(where, f"set {key!r}: no such key in params.yaml") from None
        if not isinstance(parent, dict):
            raise ConfigError(where, f"set {key!r}: {key.rpartition('.')[0]!r} is not a mapping in params.yaml")
        *parents, last = key.split(".")
        node = params
        for part in parents:
            node = node[part]
        node[last] = value
    return params


def parse_row(item, where: str, kind: str = "accuracy") -> dict:
    sets = {}
    if isinstance(item, dict):
        unknown = set(item) - {"row", "set"}
        if unknown or "row" not in item:
            what = "PAIR_SET" if kind == "retrieval" else "METHOD:IPC"
            raise ConfigError(where, f"a row mapping has keys row ({what}) and set, got {sorted(item)}")
        sets = check_sets(item.get("set") or {}, where)
        item = item["row"]
    if kind == "retrieval":
        match = PAIR_SET.match(str(item))
        if not match:
            raise ConfigError(where, f"row {item!r}: expected a pair set: full, random-N, mttvl-N, herding-N, "
                                     "kcenter-N, forgetting-N or pds-N")
        return {"pairs": str(item), "kind": match.group(2) or "full", "set": sets, "name": str(item)}
    method, _, ipc = str(item).partition(":")
    if not method or not ipc.isdigit() or int(ipc) < 1:
        raise ConfigError(where, f"row {item!r}: expected METHOD:IPC (or METHOD-latent:IPC), e.g. dm:10")
    latent = method.endswith("-latent")
    return {"method": method.removesuffix("-latent"), "latent": latent, "ipc": int(ipc), "set": sets,
            "name": f"{method}:{ipc}"}


def check_sets(sets, where: str) -> dict:
    if not isinstance(sets, dict) or not all(isinstance(k, str) for k in sets):
        raise ConfigError(where, f"`set` must map dotted param names to values, got {sets!r}")
    return sets


def load_config(name: str, params: dict, dvc_stages: set[str], deferred: list | None = None) -> dict:
    """The validated configuration: every key known, every param key in params.yaml, every stage in dvc.yaml.
    With `deferred`, the schema check of its params files is appended there (for one check_params of many)."""
    path = config_path(name)
    where = str(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path)
    raw = yaml.safe_load(path.read_text()) or {}
    if not isinstance(raw, dict):
        raise ConfigError(where, "expected a mapping")
    kind = raw.get("kind")
    if kind not in KINDS:
        raise ConfigError(where, f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    unknown = set(raw) - COMMON_KEYS - KIND_KEYS[kind]
    if unknown:
        raise ConfigError(where, f"unknown keys {sorted(unknown)} for kind {kind} "
                                 f"(valid: {', '.join(sorted(COMMON_KEYS | KIND_KEYS[kind]))})")
    if not isinstance(raw.get("description"), str) or not raw["description"].strip():
        raise ConfigError(where, "description (one line) is required")
    config = {"name": path.stem, "path": where, "description": raw["description"].strip(), "kind": kind,
              "set": check_sets(raw.get("set") or {}, where), "needs": raw.get("needs") or [],
              "repeats": raw.get("repeats", 1)}
    if not isinstance(config["repeats"], int) or isinstance(config["repeats"], bool) or config["repeats"] < 1:
        raise ConfigError(where, f"repeats must be an integer >= 1, got {config['repeats']!r}")
    if not isinstance(config["needs"], list):
        raise ConfigError(where, f"needs must be a list of dvc.yaml stages, got {config['needs']!r}")
    for stage in config["needs"]:
        if str(stage).partition("@")[0] not in dvc_stages:
            raise ConfigError(where, f"needs {stage!r}: no such stage in dvc.yaml "
                                     f"(stages: {', '.join(sorted(dvc_stages))})")
    if kind in ("accuracy", "retrieval"):
        rows = raw.get("rows")
        if not isinstance(rows, list) or not rows:
            raise ConfigError(where, f"rows (a list of {'PAIR_SET' if kind == 'retrieval' else 'METHOD:IPC'}) is "
                                     f"required for kind {kind}")
        config["rows"] = [parse_row(r, where, kind) for r in rows]
        config["evaluate"] = raw.get("evaluate", True)
        if not isinstance(config["evaluate"], bool):
            raise ConfigError(where, f"evaluate must be true or false, got {config['evaluate']!r}")
        config["metrics"] = raw.get("metrics") or (RETRIEVAL_METRICS if kind == "retrieval" else DEFAULT_METRICS)
    else:
        if not isinstance(raw.get("measure"), dict):
            raise ConfigError(where, "measure (the spec of benchmarks/measure_speed.py) is required for kind speed")
        config["measure"] = raw["measure"]
    variants = raw.get("variants") or {"base": {}}
    if not isinstance(variants, dict):
        raise ConfigError(where, f"variants must map names to {{set, rows}}, got {variants!r}")
    config["variants"] = {}
    for vname, spec in variants.items():
        spec = spec or {}
        if not isinstance(spec, dict) or set(spec) - {"set", "rows", "processes"}:
            raise ConfigError(where, f"variant {vname!r}: expected a mapping with keys set, rows and processes")
        if "rows" in spec and kind == "speed":
            raise ConfigError(where, f"variant {vname!r}: rows are for kinds accuracy and retrieval")
        processes = spec.get("processes", 1)
        if not isinstance(processes, int) or isinstance(processes, bool) or processes < 1:
            raise ConfigError(where, f"variant {vname!r}: processes must be an integer >= 1, got {processes!r}")
        if processes > 1 and kind != "accuracy":
            raise ConfigError(where, f"variant {vname!r}: processes (torchrun) are for kind accuracy")
        variant = {"set": check_sets(spec.get("set") or {}, where), "own_rows": "rows" in spec,
                   "processes": processes}
        if kind != "speed":
            variant["rows"] = ([parse_row(r, where, kind) for r in spec["rows"]] if "rows" in spec
                               else config["rows"])
        config["variants"][str(vname)] = variant
    # every params file the run will write passes the project's schema: checked now, not an hour into the run
    candidates = []
    for variant in config["variants"].values():
        base = apply_sets(apply_sets(params, config["set"], where), variant["set"], where)
        candidates += [base] + [apply_sets(base, row["set"], where) for row in variant.get("rows", [])]
    if deferred is None:
        check_params([(where, candidates)])
    else:
        deferred.append((where, candidates))
    return config


CHECK_PARAMS = """
import sys, yaml
from mmdistill.core.config import validate
from mmdistill.core.schema import schema
s = schema()
for i, files in enumerate(yaml.safe_load(sys.stdin)):
    print(i, flush=True)
    for p in files:
        validate(p, s)
"""


def check_params(groups: list[tuple[str, list[dict]]]) -> None:
    """Validate groups of params files (where, files) with the project's schema, in one subprocess (this runner
    imports nothing from mmdistill); the first error is named by its group's `where`."""
    result = subprocess.run([sys.executable, "-c", CHECK_PARAMS], input=yaml.safe_dump([g for _, g in groups]),
                            text=True, capture_output=True, cwd=ROOT)
    if result.returncode:
        failed = int(result.stdout.split()[-1]) if result.stdout.split() else 0
        raise ConfigError(groups[failed][0], result.stderr.strip().splitlines()[-1].removeprefix(
            "mmdistill.core.storage.PipelineError: "))


# -------------------------------------------------------------------------------------------- the plan

def display(argv: list[str]) -> str:
    """A command as it is shown and recorded: this interpreter is `python`, its torchrun `torchrun`."""
    names = {sys.executable: "python", str(Path(sys.executable).parent / "torchrun"): "torchrun"}
    return shlex.join([names.get(a, a) for a in argv])


def plan(config: dict, base_params: dict) -> list[dict]:
    """Every step of the run, in order: params files to write and commands to run in the project copy."""
    steps, py = [], sys.executable
    base_seed = base_params["seed"]
    for vname, variant in config["variants"].items():
        for repeat in range(config["repeats"]):
            seed = base_seed + repeat
            sets = {**config["set"], **variant["set"], "seed": seed}
            unit = {"variant": vname, "seed": seed}
            steps.append({**unit, "step": "params", "set": sets})
            if config["needs"]:
                steps.append({**unit, "step": "needs", "argv": [py, "-m", "dvc", "repro", *config["needs"]]})
            if config["kind"] == "speed":
                steps.append({**unit, "step": "measure", "spec": config["measure"],
                              "argv": [py, "-m", "benchmarks.measure_speed", "--spec", "speed-spec.json",
                                       "--out", "speed-result.json"]})
                continue
            for row in variant["rows"]:
                if config["kind"] == "retrieval":
                    steps += retrieval_steps(row, unit, sets, base_params, config["evaluate"])
                    continue
                cell = {**unit, "row": row["name"], "method": row["method"], "ipc": row["ipc"]}
                if row["set"]:
                    steps.append({**cell, "step": "params", "set": {**sets, **row["set"]}})
                args = ["--method", row["method"], "--ipc", str(row["ipc"])] + (["--latent"] if row["latent"] else [])
                launcher = [py] if variant["processes"] == 1 else [
                    str(Path(py).parent / "torchrun"), "--standalone", "--nproc_per_node", str(variant["processes"])]
                steps.append({**cell, "step": "distill", "processes": variant["processes"],
                              "argv": [*launcher, "-m", "mmdistill.stages.distill", *args]})
                if config["evaluate"]:
                    steps.append({**cell, "step": "evaluate",
                                  "argv": [py, "-m", "mmdistill.stages.evaluate", *args]})
                if row["set"]:  # the next row starts from the variant's params again
                    steps.append({**cell, "step": "params", "set": sets})
    return steps


def retrieval_steps(row: dict, unit: dict, sets: dict, base_params: dict, evaluate: bool = True) -> list[dict]:
    """A pair set's steps: made (mttvl-N: distill_pairs; a coreset: select_pairs), then evaluate_retrieval (unless
    `evaluate` is false)."""
    py, cell = sys.executable, {**unit, "row": row["name"]}
    steps = [{**cell, "step": "params", "set": {**sets, **row["set"]}}] if row["set"] else []
    make = {"mttvl": "distill_pairs", "herding": "select_pairs", "kcenter": "select_pairs",
            "forgetting": "select_pairs", "pds": "select_pairs", "pds_unclip": "synthesize_pairs"}.get(row["kind"])
    if make:
        step = {**cell, "step": "distill", "argv": [py, "-m", f"mmdistill.stages.{make}", "--pairs", row["pairs"]]}
        if row["kind"] == "pds_unclip":  # generated images (the decoder is stage unclip_decoder's pds_unclip)
            step |= {"method": "pds_unclip", "images": int(row["pairs"].rpartition("-")[2])}
        if row["kind"] == "mttvl":
            params = apply_sets(base_params, {**sets, **row["set"]}, "retrieval row")
            mttvl = params["imagetext"]["mttvl"]
            step["iterations"] = mttvl["iterations"]
            # what the per-iteration fit groups by: every mttvl setting but the iteration count
            step["mttvl"] = {k: v for k, v in mttvl.items() if k not in ("iterations", "checkpoint_every")}
        steps.append(step)
    if evaluate:
        steps.append({**cell, "step": "evaluate",
                      "argv": [py, "-m", "mmdistill.stages.evaluate_retrieval", "--pairs", row["pairs"]]})
    if row["set"]:
        steps.append({**cell, "step": "params", "set": sets})
    return steps


# ------------------------------------------------------------------------------------------- the stamp

def git(*args: str) -> str:
    out = subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True)
    return out.stdout.strip() if out.returncode == 0 else ""


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def gpus() -> list[str]:
    if not shutil.which("nvidia-smi"):
        return []
    out = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader"],
                         capture_output=True, text=True)
    return [line.strip() for line in out.stdout.splitlines() if line.strip()] if out.returncode == 0 else []


def version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def stamp(argv: list[str]) -> dict:
    """What ran, where and when: the start half; finish() adds the end."""
    return {"command": display([sys.executable, "-m", "benchmarks.run", *argv]),
            "commit": git("rev-parse", "HEAD") or "unknown (not a git checkout)",
            "uncommitted_changes": bool(git("status", "--porcelain", "--untracked-files=no")),
            "machine": {"cpu": cpu_model(), "cores": os.cpu_count(), "platform": platform.platform(),
                        "gpus": gpus()},
            "threads": {k: os.environ[k] for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS") if k in os.environ},
            "versions": {"python": platform.python_version(), "torch": version("torch"), "dvc": version("dvc")},
            "started": now(), "load_start": [round(x, 2) for x in os.getloadavg()],
            "finished": None, "load_end": None, "wall_s": None}


def finish(record: dict, started: float) -> None:
    record["stamp"].update(finished=now(), load_end=[round(x, 2) for x in os.getloadavg()],
                           wall_s=round(time.perf_counter() - started, 1))


# ------------------------------------------------------------------------------------------ running it

def project_files() -> list[str]:
    out = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                         capture_output=True, text=True, check=True)
    return [f for f in out.stdout.split("\0") if f and (ROOT / f).is_file()]


def default_cache() -> Path:
    out = subprocess.run([sys.executable, "-m", "dvc", "cache", "dir"], cwd=ROOT, capture_output=True, text=True)
    return Path(out.stdout.strip()) if out.returncode == 0 and out.stdout.strip() else ROOT / ".dvc" / "cache"


def make_copy(work: Path, cache: Path) -> None:
    for name in project_files():
        target = work / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, target)
    (work / ".dvc").mkdir(exist_ok=True)
    (work / ".dvc" / "config.local").write_text(f"[core]\n    no_scm = true\n[cache]\n    dir = {cache}\n")


def environment(work: Path) -> dict:
    """The copy's code first on the path (not the checkout the package was installed from), this
    interpreter's bin first on PATH (dvc.yaml's `python -m ...` commands)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(work / "src"), str(work), *filter(None, [env.get("PYTHONPATH")])])
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env


def metrics_snapshot(work: Path) -> dict[str, tuple]:
    """Each metrics file's identity: a rewrite (even to the same bytes) changes its inode or mtime."""
    return {p.name: (st.st_ino, st.st_mtime_ns, st.st_size)
            for p in sorted((work / METRICS_DIR).glob("*.json")) for st in [p.stat()]}


def run_command(step: dict, work: Path, env: dict, log: Path) -> dict:
    before_cpu = resource.getrusage(resource.RUSAGE_CHILDREN)
    load = os.getloadavg()[0]
    start = time.perf_counter()
    with log.open("a") as out:
        out.write(f"\n$ {display(step['argv'])}\n")
        out.flush()
        rc = subprocess.run(step["argv"], cwd=work, env=env, stdout=out, stderr=subprocess.STDOUT).returncode
    after_cpu = resource.getrusage(resource.RUSAGE_CHILDREN)
    return {"rc": rc, "wall_s": round(time.perf_counter() - start, 2),
            "cpu_s": round(after_cpu.ru_utime - before_cpu.ru_utime + after_cpu.ru_stime - before_cpu.ru_stime, 2),
            "load_before": round(load, 2), "load_after": round(os.getloadavg()[0], 2)}


def logged_iterations(work: Path, step: dict) -> int | None:
    """The iterations a distill run logged: the rows of its loss curve (log_every 1), None for a method with none."""
    name = f"{step['method']}{'-latent' if '--latent' in step['argv'] else ''}-ipc{step['ipc']}"
    curve = work / "outputs" / "plots" / "loss" / f"{name}.tsv"
    return len(curve.read_text().splitlines()) - 1 if curve.exists() else None


def log_tail(log: Path, start: int, lines: int = 15) -> str:
    """The last `lines` lines the command wrote (the log from byte `start` on)."""
    with log.open("rb") as f:
        f.seek(start)
        return "\n".join(f.read().decode(errors="replace").strip().splitlines()[-lines:])


def execute(config: dict, steps: list[dict], base_params: dict, work: Path, record: dict, write) -> bool:
    env, log = environment(work), work / "benchmark.log"
    failed_units, failed_rows = set(), set()
    for step in steps:
        unit = (step["variant"], step["seed"])
        if unit in failed_units or (step["step"] == "evaluate" and (*unit, step["row"]) in failed_rows):
            continue
        if step["step"] == "params":
            params = apply_sets(base_params, step["set"], config["path"])
            (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
            continue
        if step["step"] == "measure":
            (work / "speed-spec.json").write_text(json.dumps(step["spec"]))
        print(f"[{step['variant']} seed {step['seed']}] {display(step['argv'])}", flush=True)
        before = metrics_snapshot(work) if step["step"] == "evaluate" else None
        log_start = log.stat().st_size if log.exists() else 0
        timing = run_command(step, work, env, log)
        entry = {k: step[k] for k in ("variant", "seed", "step", "row", "method", "ipc", "iterations", "processes",
                                      "images", "mttvl")
                 if k in step}
        entry |= {"command": display(step["argv"]), **timing}
        if timing["rc"] != 0:
            entry["error"] = log_tail(log, log_start)
            print(f"  failed (exit {timing['rc']}):\n{entry['error']}", file=sys.stderr, flush=True)
            if step["step"] in ("needs", "measure"):
                failed_units.add(unit)  # nothing of this variant and seed can run
            elif step["step"] == "distill":
                failed_rows.add((*unit, step["row"]))  # nothing to evaluate
        elif step["step"] == "evaluate":
            changed = {n: json.loads((work / METRICS_DIR / n).read_text())
                       for n, ident in metrics_snapshot(work).items() if before.get(n) != ident}
            if len(changed) != 1:
                entry["error"] = f"expected one new metrics file under {METRICS_DIR}, found {sorted(changed)}"
                timing["rc"] = 1
            else:
                (entry["metrics_file"], entry["metrics"]), = changed.items()
        elif step["step"] == "measure":
            entry["measurements"] = json.loads((work / "speed-result.json").read_text())
        elif step["step"] == "distill" and not config["evaluate"] and config["kind"] == "accuracy":
            entry["iterations"] = logged_iterations(work, step)
        elif step["step"] == "needs":
            if (work / BUFFER_TIMINGS).exists():
                entry["buffer"] = json.loads((work / BUFFER_TIMINGS).read_text())
            diffusion = {path.parent.name: json.loads(path.read_text())
                         for path in sorted(work.glob(DIFFUSION_RECORDS))}
            if diffusion:
                timings = {m: work / DIFFUSION_TIMINGS / f"{m}.json" for m in diffusion}  # absent: from the run cache
                entry["diffusion"] = {m: {"epoch_seconds": json.loads(timings[m].read_text())["epoch_seconds"]
                                          if timings[m].exists() else None, "train_pairs": r["train_pairs"],
                                          "resolution": r["resolution"], "classes": r.get("classes")}
                                      for m, r in diffusion.items()}
        print(f"  {timing['wall_s']:.0f} s", flush=True)
        record["steps"].append(entry)
        write()
    return all(e["rc"] == 0 for e in record["steps"]) and not failed_units


# ----------------------------------------------------------------------------------------- the report

def flatten(tree, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out |= flatten(value, f"{prefix}{key}.")
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[f"{prefix}{key}"] = value
    return out


def metric_columns(config: dict, entries: list[dict]) -> list[str]:
    found = []
    for pattern in config["metrics"]:
        for entry in entries:
            for key in flatten(entry.get("metrics", {})):
                if fnmatch.fnmatchcase(key, pattern) and key not in found:
                    found.append(key)
    return found or list(config["metrics"])


def fmt(value) -> str:
    if value is None:
        return "-"
    return f"{value:.2f}" if isinstance(value, float) else str(value)


def accuracy_tables(config: dict, record: dict) -> list[str]:
    steps = record["steps"]
    cells = {}
    for entry in steps:
        if entry["step"] in ("distill", "evaluate"):
            cells.setdefault((entry["variant"], entry["seed"], entry["row"]), {})[entry["step"]] = entry
    evaluated = [c["evaluate"] for c in cells.values() if "evaluate" in c]
    columns = metric_columns(config, evaluated) if config["evaluate"] else []
    many_variants, many_seeds = len(config["variants"]) > 1, config["repeats"] > 1
    retrieval = config["kind"] == "retrieval"
    row_head = ["pair set"] if retrieval else ["method", "IPC"]

    def row_values(row: str) -> list[str]:
        return [row] if retrieval else row.split(":")
    head = (["variant"] if many_variants else []) + row_head + (["seed"] if many_seeds else [])
    timing = config["kind"] == "accuracy" and not config["evaluate"]
    head += columns + ["make s (distill_pairs / select_pairs)" if retrieval else "distill s", "evaluate s",
                       "load (1 min) before"]
    if timing:
        head += ["processes", "iterations", "s / iteration (start-up included)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for (variant, seed, row), cell in cells.items():
        d, e = cell.get("distill", {}), cell.get("evaluate", {})
        flat = flatten(e.get("metrics", {}))
        values = ([variant] if many_variants else []) + row_values(row) + ([str(seed)] if many_seeds else [])
        values += [fmt(flat.get(c)) for c in columns]
        values += [failed(d) or fmt(d.get("wall_s")), failed(e) or fmt(e.get("wall_s")),
               fmt(d.get("load_before", e.get("load_before")))]
        if timing:
            its = d.get("iterations")
            values += [fmt(d.get("processes", 1)), fmt(its),
                       fmt(d["wall_s"] / its) if its and not d.get("rc") else "-"]
        lines.append("| " + " | ".join(values) + " |")
    if timing:
        lines += marginal_iterations(steps)
    if many_seeds and columns:
        lines += ["", f"Over the {config['repeats']} seeds (mean ± population std):", "",
                  "| " + " | ".join((["variant"] if many_variants else []) + row_head + columns) + " |",
                  "|" + "---|" * ((1 if many_variants else 0) + len(row_head) + len(columns))]
        groups = {}
        for (variant, seed, row), cell in cells.items():
            flat = flatten(cell.get("evaluate", {}).get("metrics", {}))
            groups.setdefault((variant, row), []).append(flat)
        for (variant, row), flats in groups.items():
            values = ([variant] if many_variants else []) + row_values(row)
            for c in columns:
                xs = [f[c] for f in flats if c in f]
                values.append(f"{statistics.fmean(xs):.2f} ± {statistics.pstdev(xs):.2f} (n={len(xs)})" if xs else "-")
            lines.append("| " + " | ".join(values) + " |")
    return lines


def marginal_iterations(steps: list[dict]) -> list[str]:
    """Per row, process count and seed run at two or more iteration counts: (wall of the longest - wall of the
    shortest) / (their iterations' difference), the seconds of one iteration without the start-up."""
    runs = {}
    for e in steps:
        if e["step"] == "distill" and not e.get("rc") and e.get("iterations"):
            runs.setdefault((e["row"], e.get("processes", 1), e["seed"]), []).append(e)
    lines = []
    for (row, processes, seed), group in runs.items():
        short, long = min(group, key=lambda e: e["iterations"]), max(group, key=lambda e: e["iterations"])
        extra = long["iterations"] - short["iterations"]
        if extra > 0:
            lines.append(f"| {row} | {processes} | {seed} | {short['iterations']} / {long['iterations']} | "
                         f"{short['wall_s']:.1f} / {long['wall_s']:.1f} | "
                         f"{(long['wall_s'] - short['wall_s']) / extra:.2f} | "
                         f"{(long['cpu_s'] - short['cpu_s']) / extra:.2f} | "
                         f"{short['load_before']:.2f} / {long['load_before']:.2f} |")
    if not lines:
        return []
    return ["", "Marginal seconds per iteration (start-up cancelled: the difference of two runs' wall (CPU) seconds "
            "over the difference of their iterations; CPU = user + system of every process of the run):", "",
            "| row | processes | seed | iterations | wall s | wall s / iteration | CPU s / iteration | "
            "load (1 min) before |", "|---|---|---|---|---|---|---|---|", *lines]


def retrieval_timings(record: dict) -> list[str]:
    """Seconds per mttvl iteration (distill_pairs' wall over its iterations) and per expert epoch (stage buffer's
    own measurement), per variant and seed."""
    lines = ["", "Timings (wall seconds):", "", "| variant | seed | what | s |", "|---|---|---|---|"]
    for e in record["steps"]:
        if e["step"] == "needs" and e.get("buffer", {}).get("seconds_per_expert_epoch") is not None:
            b = e["buffer"]
            lines.append(f"| {e['variant']} | {e['seed']} | expert epoch (stage buffer: {b['experts']} experts x "
                         f"{b['expert_epochs']} epochs; the buffer's own measurement) | "
                         f"{b['seconds_per_expert_epoch']:.2f} |")
        if e["step"] == "distill" and e.get("iterations") and not e.get("rc"):
            lines.append(f"| {e['variant']} | {e['seed']} | mttvl iteration ({e['row']}: {e['wall_s']:.1f} s / "
                         f"{e['iterations']} iterations, start-up included) | {e['wall_s'] / e['iterations']:.2f} |")
    lines = lines if len(lines) > 5 else []
    return lines + mttvl_iteration_fit(record)


def mttvl_iteration_fit(record: dict) -> list[str]:
    """Per mttvl row, seed and settings run at two or more iteration counts: the least-squares lines
    wall = start-up + iterations x (s per iteration), and the same for CPU seconds (less sensitive to load)."""
    groups = {}
    for e in record["steps"]:
        if e["step"] == "distill" and e.get("mttvl") and not e.get("rc"):
            key = (e["row"], e["seed"], json.dumps(e["mttvl"], sort_keys=True))
            groups.setdefault(key, []).append(e)

    def fit(xs, ys):
        mx, my = statistics.fmean(xs), statistics.fmean(ys)
        slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)
        return slope, my - slope * mx
    lines = []
    for (row, seed, settings), entries in groups.items():
        xs = [e["iterations"] for e in entries]
        if len(set(xs)) < 2:
            continue
        wall, wall0 = fit(xs, [e["wall_s"] for e in entries])
        cpu, cpu0 = fit(xs, [e["cpu_s"] for e in entries])
        mttvl = json.loads(settings)
        load = statistics.fmean(e["load_before"] for e in entries)
        lines.append(f"| {row} | {seed} | {mttvl['syn_steps']} | {mttvl['batch_syn']} | "
                     f"{', '.join(str(x) for x in xs)} | {wall:.2f} | {wall0:.1f} | {cpu:.2f} | {cpu0:.1f} | "
                     f"{load:.2f} |")
    if not lines:
        return []
    return ["", "mttvl seconds per iteration, start-up apart (least squares over the runs of a row at different "
            "iteration counts, other settings equal; batch_syn is capped at the row's N):", "",
            "| row | seed | syn_steps | batch_syn | iterations run | wall s per iteration | wall start-up s | "
            "CPU s per iteration | CPU start-up s | mean load (1 min) before |",
            "|---|---|---|---|---|---|---|---|---|---|", *lines]


def diffusion_timings(record: dict) -> list[str]:
    """Seconds per fine-tuning epoch (stage finetune_diffusion's own measurement of its training steps) and per
    generated image (the synthesis method's distill command over the images it made, start-up and pipeline load
    included; between two IPCs of one method, the difference over the extra images: start-up cancels)."""
    lines = ["", "Diffusion timings (wall seconds):", "", "| variant | seed | what | s |", "|---|---|---|---|"]
    classes = {}
    for e in record["steps"]:
        for method, d in e.get("diffusion", {}).items():
            classes[(e["variant"], e["seed"], method)] = d.get("classes")
            epochs = d["epoch_seconds"]
            if epochs:
                each = ", ".join(f"{x:.0f}" for x in epochs)
                lines.append(f"| {e['variant']} | {e['seed']} | fine-tuning epoch ({method}: {d['train_pairs']} pairs "
                             f"at {d['resolution']} px; epochs {each} s) | {statistics.fmean(epochs):.1f} |")
    rows = {}
    for e in record["steps"]:
        key = (e["variant"], e["seed"], e.get("method"))
        if e["step"] == "distill" and key in classes and not e.get("rc"):
            images = e.get("images") or e["ipc"] * classes[key]
            rows.setdefault(key, []).append((images, e["wall_s"]))
    for (variant, seed, method), runs in rows.items():
        for images, wall in runs:
            lines.append(f"| {variant} | {seed} | generated image ({method}, {images} images in {wall:.1f} s, start-up "
                         f"included) | {wall / images:.2f} |")
        (few, wall_few), (many, wall_many) = min(runs), max(runs)
        if many > few:
            lines.append(f"| {variant} | {seed} | generated image ({method}: ({wall_many:.1f} - {wall_few:.1f}) s / "
                         f"({many} - {few}) images) | {(wall_many - wall_few) / (many - few):.2f} |")
    return lines if len(lines) > 5 else []


def failed(entry: dict) -> str:
    return f"failed (exit {entry['rc']})" if entry and entry.get("rc") else ""


def speed_tables(config: dict, record: dict) -> list[str]:
    lines = []
    for entry in record["steps"]:
        if entry["step"] != "measure" or "measurements" not in entry:
            continue
        result = entry["measurements"]
        rates = {}
        for m in result["measurements"]:
            rates.setdefault((m["images"], m["loss"]), {}).setdefault(m["impl"], []).append(m["rate"])
        if len(config["variants"]) > 1 or config["repeats"] > 1:
            lines += [f"Variant {entry['variant']}, seed {entry['seed']}:", ""]
        ceiling, work = result.get("ceiling_gflops", {}), result.get("gflop_per_iteration", {})
        if ceiling:
            lines += ["Matmul ceiling on this machine (GFLOPS of a square matmul): "
                      + ", ".join(f"{k} {v:.0f}" for k, v in ceiling.items()) + ".", ""]
        lines += [f"Medians over {result['rounds']} alternating rounds, {result['threads']} torch threads; "
                  "speed-up = implementation / the per-class loop; GFLOP = the work of one iteration (counted, "
                  "eager fp32); GFLOPS = GFLOP x it/s.", "",
                  "| images | loss | implementation | it/s (median) | s/iteration | speed-up | GFLOP | GFLOPS |",
                  "|---|---|---|---|---|---|---|---|"]
        for (images, loss), impls in rates.items():
            loop = statistics.median(impls["loop"]) if "loop" in impls else None
            gflop = work.get(f"{images} {loss}")
            for impl, xs in impls.items():
                rate = statistics.median(xs)
                lines.append(f"| {images} | {loss} | {impl} | {rate:.3f} | {1 / rate:.2f} | "
                             f"{f'{rate / loop:.2f}x' if loop else '-'} | {f'{gflop:.1f}' if gflop else '-'} | "
                             f"{f'{gflop * rate:.0f}' if gflop else '-'} |")
        lines += ["", "Every measurement, with the 1-minute load average before and after it:", "",
                  "| images | loss | implementation | it/s | load before | load after |", "|---|---|---|---|---|---|"]
        lines += [f"| {m['images']} | {m['loss']} | {m['impl']} | {m['rate']:.3f} | {m['load_before']:.2f} | "
                  f"{m['load_after']:.2f} |" for m in result["measurements"]]
        lines.append("")
    return lines


def markdown(config: dict, record: dict) -> str:
    s = record["stamp"]
    machine = s["machine"]

    def load(xs):
        return " / ".join(f"{x:.2f}" for x in xs) if xs else "-"
    done = record["status"]
    lines = [f"# {config['name']}: {config['description']}", "",
             f"Generated by `python -m benchmarks.run` from `{config['path']}`; do not edit, rerun it.", "",
             f"- command: `{s['command']}`",
             f"- commit: {s['commit']}" + (" (with uncommitted changes)" if s["uncommitted_changes"] else ""),
             f"- machine: {machine['cpu']}, {machine['cores']} cores, {machine['platform']}; GPU: "
             f"{', '.join(machine['gpus']) or 'none'}"
             + (f"; threads {s['threads']}" if s["threads"] else ""),
             "- versions: " + ", ".join(f"{k} {v}" for k, v in s["versions"].items() if v),
             f"- load average (1 / 5 / 15 min): start {load(s['load_start'])}, end {load(s['load_end'])}",
             f"- started {s['started']}, finished {s['finished'] or '-'} (UTC); wall time "
             f"{fmt(s['wall_s'])} s",
             f"- status: {done}", "",
             "## Settings", "",
             "- over params.yaml: " + (", ".join(f"`{k}={json.dumps(v)}`" for k, v in config["set"].items()) or "-"),
             "- reproduced first: " + (f"`dvc repro {' '.join(config['needs'])}`" if config["needs"] else "-"),
             f"- repeats: {config['repeats']} (seed = params.yaml's seed + 0 ... {config['repeats'] - 1})"]
    if len(config["variants"]) > 1:
        lines.append("- variants:")
        for name, variant in config["variants"].items():
            sets = ", ".join(f"`{k}={json.dumps(v)}`" for k, v in variant["set"].items()) or "no change"
            rows = f" (rows {', '.join(r['name'] for r in variant['rows'])})" if variant["own_rows"] else ""
            processes = variant.get("processes", 1)
            torchrun = f"; distill under torchrun, {processes} processes" if processes > 1 else ""
            lines.append(f"  - {name}: {sets}{rows}{torchrun}")
    row_sets = {r["name"]: r["set"] for v in config["variants"].values() for r in v.get("rows", []) if r["set"]}
    for name, sets in row_sets.items():
        lines.append(f"- row {name}: " + ", ".join(f"`{k}={json.dumps(v)}`" for k, v in sets.items()))
    if config["kind"] == "speed":
        lines.append(f"- measure: `{json.dumps(config['measure'])}`")
    lines += ["", "## Results", ""]
    if config["kind"] == "speed":
        lines += speed_tables(config, record)
    else:
        lines += accuracy_tables(config, record)
    if config["kind"] == "retrieval":
        lines += retrieval_timings(record)
    lines += diffusion_timings(record)
    lines += ["", "## Commands", "",
              "Run in a copy of the project; wall and CPU seconds (CPU: user + system of the command and its "
              "children).", "",
              "| variant | seed | command | exit | wall s | CPU s | load before | load after |",
              "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {e['variant']} | {e['seed']} | `{e['command']}` | {e['rc']} | {e['wall_s']:.1f} | {e['cpu_s']:.1f} | "
              f"{e['load_before']:.2f} | {e['load_after']:.2f} |" for e in record["steps"]]
    errors = [e for e in record["steps"] if e.get("error")]
    for e in errors:
        lines += ["", f"`{e['command']}` ({e['variant']}, seed {e['seed']}) failed:", "", "```", e["error"], "```"]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------------- main

def read_yaml(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def describe_step(step: dict) -> str:
    if step["step"] == "params":
        return "write params.yaml: params.yaml + " + ", ".join(f"{k}={json.dumps(v)}" for k, v in step["set"].items())
    if step["step"] == "measure":
        return f"write speed-spec.json: {json.dumps(step['spec'])}\n{display(step['argv'])}"
    return display(step["argv"])


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("name", nargs="?", help="a config of benchmarks/configs/ (or a path to a .yaml)")
    parser.add_argument("--list", action="store_true", help="list the configurations")
    parser.add_argument("--check", action="store_true",
                        help="validate every configuration (or NAME) and plan it, in one process; run nothing")
    parser.add_argument("--dry-run", action="store_true", help="print the stamp and the commands; run nothing")
    parser.add_argument("--json", action="store_true", help="with --dry-run: print the plan as JSON")
    parser.add_argument("--workdir", type=Path, help="where to make the project copy (default: a new temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the project copy after a successful run")
    parser.add_argument("--cache", type=Path, help="DVC cache of the copy (default: this project's)")
    parser.add_argument("--out-dir", type=Path, default=RESULTS, help="where NAME.md and NAME.json go")
    args = parser.parse_args(argv)
    if args.list:
        for name in known_configs():
            print(f"{name}: {read_yaml(CONFIGS / f'{name}.yaml').get('description', '')}")
        return 0
    base_params = read_yaml(ROOT / "params.yaml")
    dvc_stages = set((read_yaml(ROOT / "dvc.yaml") or {}).get("stages", {}))
    if args.check:
        deferred, planned = [], {}
        for name in [args.name] if args.name else known_configs():
            steps = plan(load_config(name, base_params, dvc_stages, deferred), base_params)
            planned[name] = sum(1 for s in steps if "argv" in s)
        check_params(deferred)
        for name, commands in planned.items():
            print(f"{name}: valid, {commands} commands")
        return 0
    if not args.name:
        parser.error("NAME is required (or --list, --check)")
    config = load_config(args.name, base_params, dvc_stages)
    steps = plan(config, base_params)
    record = {"config": {k: v for k, v in config.items()}, "stamp": stamp(argv), "status": "not started",
              "steps": []}
    if args.dry_run:
        shown = {"stamp": record["stamp"], "config": config["path"],
                 "steps": [{**{k: v for k, v in s.items() if k != "argv"},
                            **({"command": display(s["argv"])} if "argv" in s else {})} for s in steps]}
        if args.json:
            print(json.dumps(shown, indent=1))
        else:
            print(json.dumps(record["stamp"], indent=1))
            print(f"# in a copy of {ROOT} (DVC cache shared), from {config['path']}:")
            for step in steps:
                print(describe_step(step))
        return 0
    started = time.perf_counter()
    cache = (args.cache or default_cache()).resolve()
    work = (args.workdir.resolve() if args.workdir else Path(tempfile.mkdtemp(prefix=f"benchmark-{config['name']}-")))
    work.mkdir(parents=True, exist_ok=True)
    out_md, out_json = args.out_dir / f"{config['name']}.md", args.out_dir / f"{config['name']}.json"
    args.out_dir.mkdir(parents=True, exist_ok=True)
    total = sum(1 for s in steps if "argv" in s)

    def write(status: str | None = None) -> None:
        record["status"] = status or f"running: {len(record['steps'])} of {total} commands done"
        finish(record, started)
        for path, text in ((out_json, json.dumps(record, indent=1) + "\n"), (out_md, markdown(config, record))):
            tmp = path.with_suffix(path.suffix + ".tmp")
            tmp.write_text(text)
            tmp.replace(path)

    print(f"copying the project to {work} (DVC cache {cache})", flush=True)
    make_copy(work, cache)
    write()
    ok = execute(config, steps, base_params, work, record, write)
    write("complete" if ok else "failed (see Commands)")
    print(f"wrote {out_md} and {out_json}")
    if ok and not args.keep and not args.workdir:
        shutil.rmtree(work, ignore_errors=True)
    else:
        print(f"project copy kept at {work} (log: {work / 'benchmark.log'})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

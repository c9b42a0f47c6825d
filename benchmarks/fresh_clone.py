"""The default run's wall time on a fresh clone, and where it goes: -> benchmarks/results/fresh_clone.{md,json}

    python -m benchmarks.fresh_clone [--from-scratch] [--workdir DIR] [--out-dir DIR]

Clones this repository's HEAD (committed files only) into a new directory (default: a temporary one), runs
`/usr/bin/time -v make run` there (set-up of .venv, data, `dvc repro`, `dvc metrics show`) and times every stage
from the moment `dvc repro` announces it to the next announcement (the last one to the end of `dvc repro`).
A stage whose committed (`cache: false`, in git) outputs match what its re-made inputs hash to is up to date for
DVC and skipped, as for any user of the clone: the evaluations, when the distilled sets come out byte-identical
to dvc.lock's. `--from-scratch` first deletes those committed outputs in the clone, so that every stage runs: the
pipeline's whole cost (-> fresh_clone_from_scratch.{md,json}).
Nothing is cached from this checkout: the clone has its own empty DVC cache, and torch.compile an empty cache
directory of its own (TORCHINDUCTOR_CACHE_DIR), so every compilation is paid as on a fresh machine. Run it on otherwise idle cores; the
load average at the start and end is in the result. The clone is removed afterwards unless --workdir was given.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.run import ROOT, finish, fmt, stamp
from mmdistill.devtools.pipeline import committed_outputs

STAGE = re.compile(r"^Running stage '([^']+)':")
SKIPPED = re.compile(r"^Stage '([^']+)' didn't change, skipping")
TIME_KEYS = {"Elapsed (wall clock) time (h:mm:ss or m:ss)": "wall", "User time (seconds)": "user_s",
             "System time (seconds)": "system_s", "Maximum resident set size (kbytes)": "max_rss_kb"}


def delete_committed_outputs(clone: Path) -> list[str]:
    """Delete the `cache: false` outputs of the clone's pipeline (they come with git) -> their paths."""
    paths = committed_outputs(clone)
    for path in paths:
        target = clone / path
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()
    return paths


def run_make(clone: Path, compile_cache: Path) -> tuple[list[tuple[str, float]], list[str], dict, int, list[str]]:
    """-> ([(event, seconds since start)], [skipped stage], /usr/bin/time fields, exit code, last output lines)."""
    start = time.perf_counter()
    events, skipped, tail, usage = [("(set-up: .venv, data)", 0.0)], [], [], {}
    proc = subprocess.Popen(["/usr/bin/time", "-v", "make", "run"], cwd=clone, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, bufsize=1,
                            env={**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(compile_cache)})
    for line in proc.stdout:
        sys.stdout.write(line)
        stripped = line.strip()
        match = STAGE.match(stripped)
        if match:
            events.append((match.group(1), time.perf_counter() - start))
        elif skip := SKIPPED.match(stripped):
            skipped.append(skip.group(1))
        elif stripped.startswith("dvc metrics show"):
            events.append(("(dvc metrics show)", time.perf_counter() - start))
        elif stripped == "dvc repro":
            events.append(("(dvc repro start-up)", time.perf_counter() - start))
        key = stripped.partition(": ")[0]
        if key in TIME_KEYS:
            usage[TIME_KEYS[key]] = stripped.partition(": ")[2]
        tail = (tail + [line.rstrip()])[-20:]
    code = proc.wait()
    events.append(("(end)", time.perf_counter() - start))
    return events, skipped, usage, code, tail


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, help="clone here (must not exist; kept afterwards)")
    parser.add_argument("--out-dir", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--from-scratch", action="store_true",
                        help="delete the committed (cache: false) outputs first, so that every stage runs")
    args = parser.parse_args()
    if args.workdir is not None and args.workdir.exists():
        parser.error(f"--workdir {args.workdir} exists; name a path that does not, or remove it")
    name = "fresh_clone_from_scratch" if args.from_scratch else "fresh_clone"
    record = {"stamp": stamp([])}
    record["stamp"]["command"] = " ".join(["python -m benchmarks.fresh_clone", *sys.argv[1:]])
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="fresh-clone-") as tmp:
        clone = args.workdir or Path(tmp) / "clone"
        subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
        deleted = delete_committed_outputs(clone) if args.from_scratch else []
        events, skipped, usage, code, tail = run_make(clone, Path(tmp) / "torchinductor")
    finish(record, started)
    stages = [{"stage": stage, "start_s": round(t, 1), "seconds": round(events[i + 1][1] - t, 1)}
              for i, (stage, t) in enumerate(events[:-1])]
    record.update(exit_code=code, usage=usage, deleted_committed_outputs=deleted, stages=stages, skipped=skipped,
                  tail=tail if code else [])
    out = args.out_dir
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(record, indent=1) + "\n")
    (out / f"{name}.md").write_text(markdown(record))
    print(f"fresh clone: make run exit {code}, wall {usage.get('wall', '?')}, {len(skipped)} stages up to date "
          f"-> {out / f'{name}.md'}")


def markdown(record: dict) -> str:
    s, usage = record["stamp"], record["usage"]
    load = " / ".join(f"{x:.2f}" for x in s["load_start"]), " / ".join(f"{x:.2f}" for x in s["load_end"])
    groups: dict[str, list[float]] = {}
    for row in record["stages"]:
        groups.setdefault(row["stage"].split("@")[0], []).append(row["seconds"])
    scratch = bool(record["deleted_committed_outputs"])
    lines = [f"# fresh_clone{'_from_scratch' if scratch else ''}: `/usr/bin/time -v make run` on a fresh clone"
             f"{', its committed outputs deleted' if scratch else ''}", "",
             f"Generated by `python -m benchmarks.fresh_clone{' --from-scratch' if scratch else ''}`; do not edit, "
             "rerun it.", "",
             f"- command: `{s['command']}`", f"- commit: {s['commit']}",
             f"- machine: {s['machine']['cpu']}, {s['machine']['cores']} cores, {s['machine']['platform']}; GPU: "
             f"{', '.join(s['machine']['gpus']) or 'none'}",
             f"- load average (1 / 5 / 15 min): start {load[0]}, end {load[1]}",
             "- caches: the clone's own empty DVC cache; torch.compile's cache an empty directory",
             f"- committed (`cache: false`) outputs deleted before the run: {len(record['deleted_committed_outputs'])}"
             f"{' (every stage runs)' if record['deleted_committed_outputs'] else ' (none: as a user clones it)'}",
             f"- stages up to date (their committed outputs match their re-made inputs), not run: "
             f"{len(record['skipped'])}{': ' + ', '.join(record['skipped']) if record['skipped'] else ''}",
             f"- started {s['started']}, finished {s['finished']} (UTC)",
             f"- make run: exit {record['exit_code']}, wall {usage.get('wall', '?')}, user {usage.get('user_s', '?')} s, "
             f"system {usage.get('system_s', '?')} s, max RSS {usage.get('max_rss_kb', '?')} kB", "",
             "## By stage kind (seconds; a matrix stage's runs summed)", "",
             "| stage | runs | s | share |", "|---|---|---|---|"]
    total = sum(sum(v) for v in groups.values()) or 1
    for stage, secs in sorted(groups.items(), key=lambda kv: -sum(kv[1])):
        lines.append(f"| {stage} | {len(secs)} | {fmt(round(sum(secs), 1))} | {100 * sum(secs) / total:.0f} % |")
    lines += ["", "## Every stage, in order", "", "| stage | start s | s |", "|---|---|---|"]
    lines += [f"| {r['stage']} | {fmt(r['start_s'])} | {fmt(r['seconds'])} |" for r in record["stages"]]
    if record["tail"]:
        lines += ["", "## Last output (the run failed)", "", "```", *record["tail"], "```"]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()

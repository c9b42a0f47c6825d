"""report: outputs/report.md, the method x IPC x architecture accuracy table and what produced it;
outputs/plots/accuracy.json, the data of dvc.yaml's accuracy-vs-IPC plot.

Reads outputs/metrics/{method}-ipcK.json (accuracies) and outputs/evaluate/{method}-ipcK.json (what
produced them) for every run of params (runs of `distill.methods.latent` as {method}-latent, with no published
row) and, when present, outputs/{metrics,evaluate}/full.json (the whole-train-split upper bound).
With `imagetext.stages` on, a retrieval section: outputs/{metrics,evaluate}/retrieval-{set}.json of every pair set of
imagetext.pair_sets, distill_sets, coreset_sets and synthesis_sets (mmdistill.report.markdown.retrieval_table),
refused when made with another seed, pair model or evaluation budget.
Beside our default-net numbers it prints the papers' published accuracy where a row exists for the
same dataset, method, IPC and network (PUBLISHED in mmdistill.report.markdown), labelled with its
source; their budgets are the papers', not ours.

outputs/plots/accuracy/{method}.json: [{"ipc": K, "test_accuracy": % of the default net}, ...] by IPC, one
file (a line of `dvc plots show`) per method of params.

Stale results are refused, not mixed in: each evaluation record holds the settings its synthetic set was made with
(`distill`) and its evaluation budget; when they differ from what params.yaml resolves to now
(mmdistill.distill.runs.recorded_settings: the method's resolved settings, a `flip: auto` as the prepared dataset's
default, kcenter's / forgetting's select param; evaluate.*, evaluate_full.*, seed), the report stops naming the run
and the setting (run `dvc repro` first).

Which form of a method ran is in its row: the settings that choose between a paper's form and an earlier one
(FORM_KEYS: forgetting_order, kcenter_start, full_term, masked_term, masked_distance, memory) follow the method's
name, e.g. `forgetting (forgetting_order fewest)`, `masked_dm (full_term dc, masked_term pairs)`; all settings are
listed under Budgets.

Runs no longer enabled (a method dropped from `distill.methods`, an IPC from `distill.ipcs`) have no stage in
dvc.yaml any more, so nothing would ever update or remove their files: after writing the report, their
outputs/metrics/{run}.json, outputs/evaluate/{run}.json, outputs/figures/distilled/{run}.png,
outputs/plots/loss/{run}.tsv and outputs/distill/{run}/ are removed (cache: false outputs of stages that no longer
exist, in git; the removal is what to commit). Files of enabled runs and the other files there (align.json,
full.json, ...) are left alone.
"""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

from mmdistill.annotate.cache import annotation_backend
from mmdistill.core.config import int_list, load_params, param
from mmdistill.core.paths import (
    ACCURACY_PLOTS,
    DISTILL_LOGS,
    DISTILLED_FIGURES,
    EVALUATIONS,
    FULL_METRICS,
    LOSS_CURVES,
    METRICS,
    REPORT,
    run_name,
)
from mmdistill.core.runtime import versions
from mmdistill.core.storage import PipelineError, atomic_path, check_writable, save_json, save_text
from mmdistill.data.datasets import dataset_info, resolve_flip
from mmdistill.distill import methods as registry
from mmdistill.distill.runs import recorded_settings
from mmdistill.embed.features import feature_metadata
from mmdistill.report.markdown import (
    PUBLISHED,
    accuracy_by_ipc,
    benchmark_table,
    label_caption_table,
    retrieval_table,
    table,
)
from mmdistill.stages import run_stage

BENCHMARK_RESULTS = Path("benchmarks/results")  # python -m benchmarks.run NAME writes NAME.json; not a stage output


def evaluation(run: str, stage: str) -> tuple[dict, dict]:
    """(record, metrics) of one evaluate run, e.g. "dm-ipc10" or "full" (made by `stage`)."""
    metrics, record = METRICS / f"{run}.json", EVALUATIONS / f"{run}.json"
    for path in (metrics, record):
        if not path.exists():
            raise PipelineError(f"{path} is missing: run `dvc repro {stage}`")
    return json.loads(record.read_text()), json.loads(metrics.read_text())


def check_current(run: str, record: dict, expected: dict) -> None:
    """A PipelineError naming the run and the first setting its record holds other than `expected` (params now)."""
    path = EVALUATIONS / f"{run}.json"
    for key, now in expected.items():
        then = record.get(key)
        if key == "distill" and isinstance(then, dict):
            keys = sorted(set(then) | set(now), key=lambda k: (k not in now, k))
            key, then, now = next(((f"distill.{k}", then.get(k, "(none)"), now.get(k, "(none)")) for k in keys
                                   if then.get(k) != now.get(k)), (key, then, now))
        if then != now:
            raise PipelineError(f"{path} (run {run}) was made with {key} = {then!r}, params.yaml has {now!r} now: "
                                f"its metrics are stale; run `dvc repro` (or the run's distill and evaluate) before "
                                "the report")


def budget(params: dict, full: bool, info: dict) -> dict:
    """The evaluation settings a record holds, as params.yaml has them now."""
    section = "evaluate_full" if full else "evaluate"
    return {"epochs": param(params, f"{section}.epochs", int), "repeats": param(params, f"{section}.repeats", int),
            "augment": param(params, f"{section}.augment", bool), "lr": param(params, "evaluate.lr", float),
            "batch_size": param(params, "evaluate.batch_size", int), "seed": param(params, "seed", int),
            "precision": param(params, "evaluate.precision", str),
            "compile": param(params, "evaluate.compile", str) or None,
            "flip": param(params, f"{section}.augment", bool) and resolve_flip(param(params, "evaluate.flip"),
                                                                                "evaluate.flip", info),
            "dsa": dict(param(params, "dsa")) if param(params, f"{section}.augment", bool) else None}


# settings that say which form of a method ran (a paper's form or an earlier one): shown beside its name in the table
FORM_KEYS = ("forgetting_order", "kcenter_start", "full_term", "masked_term", "masked_distance", "memory")
PAPER_SWITCHES = {"siamese": True}  # shown only where a run turned the paper's form off


def form_label(label: str, settings: dict) -> str:
    """The table's method cell: `label`, with the FORM_KEYS settings of the run (if any) and any PAPER_SWITCHES
    off in brackets."""
    form = [f"{k} {settings[k]}" for k in FORM_KEYS if k in settings]
    form += [f"{k} {on_off(settings[k])}" for k, paper in PAPER_SWITCHES.items() if settings.get(k, paper) != paper]
    form = ", ".join(form)
    return f"{label} ({form})" if form else label


RUN_FILE = re.compile(r"^.+-ipc\d+$")  # core.paths.run_name: {method}-ipc{K}, {method}-latent-ipc{K}


def remove_stale_runs(current: set[str]) -> list[Path]:
    """Remove the metrics, records, figures, loss curves and logs of runs not in `current` -> what was removed."""
    removed = []
    for folder, suffix in ((METRICS, ".json"), (EVALUATIONS, ".json"), (DISTILLED_FIGURES, ".png"),
                           (LOSS_CURVES, ".tsv")):
        for path in sorted(folder.glob(f"*{suffix}")):
            if path.is_file() and RUN_FILE.match(path.stem) and path.stem not in current:
                path.unlink()
                removed.append(path)
    for path in sorted(DISTILL_LOGS.glob("*")):
        if path.is_dir() and RUN_FILE.match(path.name) and path.name not in current:
            shutil.rmtree(path)
            removed.append(path)
    return removed


RETRIEVAL_STAGES = {"pair_sets": "evaluate_retrieval", "distill_sets": "evaluate_distilled_pairs",
                    "coreset_sets": "evaluate_coreset_pairs", "synthesis_sets": "evaluate_synthesis_pairs"}


def retrieval_runs(params: dict) -> list[tuple[str, dict, dict]]:
    """(pair-set name, record, metrics) of every pair set params.yaml lists (with `imagetext.stages` on), each
    checked to be made with the current seed, pair model and evaluation budget."""
    if not params["imagetext"]["stages"]:
        return []
    runs = []
    for key, stage in RETRIEVAL_STAGES.items():
        for name in params["imagetext"][key]:
            record, metrics = evaluation(f"retrieval-{name}", f"{stage}@{name}")
            check_current(f"retrieval-{name}", record, {"seed": param(params, "seed", int),
                                                        "model": params["imagetext"]["model"],
                                                        "evaluate": params["imagetext"]["evaluate"]})
            runs.append((name, record, metrics))
    return runs


def on_off(flag) -> str:
    """A recorded switch as on / off ("unknown" where none was recorded)."""
    return "unknown" if flag is None else "on" if flag else "off"


def main() -> None:
    params = load_params()
    check_writable(REPORT, ACCURACY_PLOTS, METRICS / "x.json", EVALUATIONS / "x.json")
    ipcs = int_list(params, "distill.ipcs")
    runs = [(method, ipc, latent) for method, latent in registry.enabled(params) for ipc in ipcs]
    rows, info = [], None
    for method, ipc, latent in runs:
        run = run_name(method, ipc, latent)
        record, metrics = evaluation(run, "evaluate")  # a missing record is named before the prepared data is read
        info = info or dataset_info()
        settings = json.loads(json.dumps(recorded_settings(params, method, info)))  # as the record holds them
        check_current(run, record, {"distill": settings, **budget(params, False, info)})
        label = f"{method}-latent" if latent else method
        # the cell names the form that ran; record "method" keeps the plain name (no published row for a latent run)
        rows.append((form_label(label, record["distill"]), str(ipc), {**record, "method": label}, metrics))
    full = None  # the record of the whole-train-split row
    if FULL_METRICS.exists():
        full, full_metrics = evaluation("full", "evaluate_full")
        info = info or dataset_info()
        check_current("full", full, budget(params, True, info))
        rows.append((f"whole train split ({full['train_images']} images)", "—", full, full_metrics))
    info = info or dataset_info()
    first = rows[0][2]
    entry = PUBLISHED.get(info["name"])
    lines = [
        "# Distillation report",
        "",
        f"Dataset: {info['name']} ({info['sizes']['train']} train images used, {info['sizes']['val']} val, "
        f"{info['sizes']['test']} test; {info['channels']}x{info['height']}x{info['width']}). "
        f"Accuracy: {first['net']} trained from scratch on the synthetic set only, mean ± std over "
        f"{first['repeats']} runs, on the full test split; other architectures of `evaluate.nets` in their own "
        "columns. Val accuracy (default net) is reported beside it; no choice is made on either split.",
        "",
        *table(rows, info),
        "",
        (f"Published: {entry['source']}; the papers' full budgets, not the reduced ones below, so the columns are "
         "not directly comparable. '—': no published row for this dataset, method, IPC and network."
         if entry else "Published: no published numbers are recorded for this dataset (stages/report.py, PUBLISHED)."),
        "" if full else "The whole-train-split row is missing: run `dvc repro evaluate_full`.",
        "",
        "## Budgets (reduced for a 2-core CPU; the papers' budgets are in README, 'Paper budgets')",
        "",
        f"- evaluate: {first['epochs']} epochs (paper: 1000), lr {first['lr']} (x0.1 at half), SGD momentum 0.9, "
        "weight decay 5e-4, DSA augmentation "
        f"{'on, flip ' + on_off(first.get('flip')) if first['augment'] else 'off'}, {first['repeats']} repeats, "
        f"precision {first.get('precision', 'fp32')}, "
        f"{'compiled with ' + first['compile'] if first.get('compile') else 'eager'} "
        "(params `evaluate.precision`, `evaluate.compile`)",
        f"- DSA flip: the dataset's default (recorded by prepare) is {on_off(info.get('flip'))}; every `flip: auto` "
        "param follows it, `true`/`false` override it. Each distilled set's `flip` below is the value it used.",
        f"- DSA form (params `dsa`): crop {param(params, 'dsa.crop', str)} (shift = DSA's whole-pixel translation), "
        f"align_corners {on_off(param(params, 'dsa.align_corners', bool))}; `siamese` on = DSA's pairing of a "
        "class's real and synthetic images under one transform",
        f"- distillation precision (params `distill.engine.precision`): "
        f"{param(params, 'distill.engine.precision', str)}"
        f"{', compiled with ' + param(params, 'distill.engine.compile', str) if param(params, 'distill.engine.compile', str) else ', eager'}",
    ]
    if full:
        lines.append(f"- whole train split: {full['epochs']} epochs, {full['repeats']} repeat(s), same optimiser")
    retrieval = retrieval_runs(params)
    if retrieval:
        first_run = retrieval[0][1]
        budget_ = first_run["evaluate"]
        lines += ["", "## Image–text retrieval", "",
                  f"Dataset {first_run['dataset']}; pair model: image encoder {first_run['model']['image_encoder']} + "
                  f"frozen {params['imagetext']['text_encoder']} caption features, "
                  f"{budget_['repeats']} students per pair set trained {budget_['epochs']} epochs (SGD, lr "
                  f"{budget_['lr']}; an mttvl set at its learned lr), test split, mean ± std over the students. "
                  "TR: image → text (a hit if any of its captions is in the top K); IR: text → image. Pairs: train "
                  "images (random and coresets: with all their captions; mttvl: one synthetic caption each).",
                  "", *retrieval_table(retrieval)]
        if first_run["dataset"] == "fashion_mnist_captions":
            captions = info["captions_per_image"]["max"]
            lines += ["", "### Label captions beside MTT-VL Table 7 (CIFAR-10)", "",
                      f"Fashion-MNIST with its labels as captions ({captions} per image): an image's TR R@1 is whether "
                      "it is matched with its own class's caption, the protocol of MTT-VL Appendix B, whose CIFAR-10 "
                      "rows stand beside ours by images per class (mttvl-N: N / "
                      f"{len(info['class_names'])} per class). Different dataset and budget; ours as above.", "",
                      *label_caption_table(retrieval, len(info["class_names"]), captions)]
    settings_of = {}  # the resolved settings each synthetic set was made with, as its evaluation recorded them
    for _, _, record, _ in rows:
        if record["ipc"] is not None:
            settings_of.setdefault(record["method"], record["distill"])
    for label, section in settings_of.items():
        settings = ", ".join(f"{k} {v}" for k, v in section.items() if not isinstance(v, (dict, list)))
        lines.append(f"- {label}: {settings or 'no settings'}")
    benchmarks = param(params, "report.benchmarks", list)
    if benchmarks:
        lines += ["", "## Benchmark runs (other budgets than this run; generated, not part of this DAG)", ""]
    for name in benchmarks:
        path = BENCHMARK_RESULTS / f"{name}.json"
        if not path.exists():
            raise PipelineError(f"param 'report.benchmarks' names {name!r}, but {path} does not exist: "
                                f"run `python -m benchmarks.run {name}` or drop it from the list")
        lines += [*benchmark_table(name, json.loads(path.read_text())), ""]
    lines += ["", "## Backends", ""]
    for name in ("tags", "instances", "captions", "descriptions"):
        lines.append(f"- {name}: `{annotation_backend(name).get('backend', 'unknown')}`")
    for kind in ("image", "caption"):
        lines.append(f"- {kind} features: `{feature_metadata(kind).get('encoder', 'unknown')}`")
    lines += ["", "## Reproducibility", "", f"- seed: {param(params, 'seed', int)}",
              f"- device: {param(params, 'device', str)}"]
    lines += [f"- {k}: {v}" for k, v in sorted(versions().items())]
    lines += ["", "## Synthetic sets", ""]
    for method, ipc, latent in runs:
        lines.append(f"![{method}{'-latent' if latent else ''}, IPC {ipc}](figures/distilled/"
                     f"{run_name(method, ipc, latent)}.png)")
    save_text("\n".join(lines) + "\n", REPORT)
    series = accuracy_by_ipc([(record["method"], record, metrics) for _, _, record, metrics in rows
                              if record["ipc"] is not None])
    with atomic_path(ACCURACY_PLOTS) as folder:  # the whole folder: series of methods no longer run disappear
        for name, points in series.items():
            save_json(points, folder / f"{name}.json")
    removed = remove_stale_runs({run_name(*r) for r in runs})
    if removed:
        print(f"removed {len(removed)} output(s) of runs no longer in distill.methods x distill.ipcs: "
              + ", ".join(map(str, removed)))
    print(f"wrote {REPORT}, {ACCURACY_PLOTS}/")


if __name__ == "__main__":
    run_stage(main)

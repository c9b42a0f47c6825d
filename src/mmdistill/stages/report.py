"""report: outputs/report.md, the method x IPC x architecture accuracy table and what produced it.

Reads outputs/metrics/{run}.json for every (method, IPC) of params, runs of `distill.methods.latent` as
{method}-latent (the table is built from the metrics files) and, when present, outputs/metrics/full.json (the
whole-train-split upper bound). Beside our default-net numbers it prints the papers' published
accuracy where a row exists for the same dataset, method, IPC and network (PUBLISHED below),
labelled with its source; their budgets are the papers', not ours.
"""
from __future__ import annotations

import json

from mmdistill.annotate.cache import annotation_backend
from mmdistill.core.config import int_list, load_params, param
from mmdistill.core.paths import FULL_METRICS, REPORT, run_metrics, run_name
from mmdistill.core.runtime import versions
from mmdistill.core.storage import PipelineError, save_text
from mmdistill.data.datasets import dataset_info
from mmdistill.distill import methods as registry
from mmdistill.embed.features import feature_metadata
from mmdistill.report.markdown import PUBLISHED, table
from mmdistill.stages import run_stage


def main() -> None:
    params = load_params()
    runs = registry.enabled(params)
    ipcs = int_list(params, "distill.ipcs")
    rows = []
    for method, latent in runs:
        for ipc in ipcs:
            path = run_metrics(run_name(method, ipc, latent))
            if not path.exists():
                raise PipelineError(f"{path} is missing: run `dvc repro evaluate`")
            metrics = json.loads(path.read_text())
            if latent:  # the papers' numbers are for pixel-space runs: no published row for a latent run
                metrics = {**metrics, "method": f"{method}-latent"}
            rows.append((f"{method}-latent" if latent else method, str(ipc), metrics))
    full = json.loads(FULL_METRICS.read_text()) if FULL_METRICS.exists() else None
    if full is not None:
        rows.append((f"whole train split ({full['train_images']} images)", "—", full))
    info = dataset_info()
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
        f"weight decay 5e-4, DSA augmentation {'on' if first['augment'] else 'off'}, {first['repeats']} repeats",
    ]
    if full:
        lines.append(f"- whole train split: {full['epochs']} epochs, {full['repeats']} repeat(s), same optimiser")
    for method, latent in runs:
        section, _ = registry.resolve(params, method)
        settings = ", ".join(f"{k} {v}" for k, v in section.items() if not isinstance(v, (dict, list)))
        lines.append(f"- {method}{'-latent' if latent else ''}: {settings or 'no settings'}")
    lines += ["", "## Backends", ""]
    for name in ("tags", "instances", "captions", "descriptions"):
        lines.append(f"- {name}: `{annotation_backend(name).get('backend', 'unknown')}`")
    for kind in ("image", "caption"):
        lines.append(f"- {kind} features: `{feature_metadata(kind).get('encoder', 'unknown')}`")
    lines += ["", "## Reproducibility", "", f"- seed: {param(params, 'seed', int)}",
              f"- device: {param(params, 'device', str)}"]
    lines += [f"- {k}: {v}" for k, v in sorted(versions().items())]
    lines += ["", "## Synthetic sets", ""]
    for method, latent in runs:
        for ipc in ipcs:
            lines.append(f"![{method}{'-latent' if latent else ''}, IPC {ipc}](figures/distilled/"
                         f"{run_name(method, ipc, latent)}.png)")
    save_text("\n".join(lines) + "\n", REPORT)
    print(f"wrote {REPORT}")


if __name__ == "__main__":
    run_stage(main)

"""report: outputs/report.md, the accuracy table of every (method, IPC) and what produced it."""
from __future__ import annotations

import json

from stages.annotate import annotation_backend
from stages.data import dataset_info
from stages.distill import GRIDS
from stages.embed import feature_metadata
from stages.evaluate import METRICS
from stages.io import PipelineError, save_text
from stages.params import int_list, load_params, param, versions

REPORT = "outputs/report.md"


def main() -> None:
    params = load_params()
    methods = param(params, "distill.methods", list)
    ipcs = int_list(params, "distill.ipcs")
    rows, metrics = [], {}
    for method in methods:
        for ipc in ipcs:
            path = METRICS / f"{method}-ipc{ipc}.json"
            if not path.exists():
                raise PipelineError(f"{path} is missing: run `dvc repro evaluate`")
            m = metrics[(method, ipc)] = json.loads(path.read_text())
            rows.append(f"| {method} | {ipc} | {m['test_accuracy_mean']:.2f} ± {m['test_accuracy_std']:.2f} "
                        f"| {m['val_accuracy_mean']:.2f} |")
    info = dataset_info()
    first = next(iter(metrics.values()))
    lines = [
        "# Distillation report",
        "",
        f"Dataset: {info['name']} ({info['sizes']['train']} train images used, {info['sizes']['val']} val, "
        f"{info['sizes']['test']} test; {info['channels']}x{info['height']}x{info['width']}). "
        f"Accuracy: {first['net']} trained from scratch on the synthetic set only, mean ± std over "
        f"{first['repeats']} runs, on the full test split. Val accuracy is reported beside it; no choice "
        "is made on either split.",
        "",
        "| method | IPC | accuracy (%) | val accuracy (%) |",
        "|---|---|---|---|",
        *rows,
        "",
        "## Budgets (reduced for a 2-core CPU; the papers' budgets are in README, 'Paper budgets')",
        "",
        f"- evaluate: {first['epochs']} epochs (paper: 1000), lr {first['lr']} (x0.1 at half), SGD momentum 0.9, "
        f"weight decay 5e-4, DSA augmentation {'on' if first['augment'] else 'off'}, {first['repeats']} repeats",
    ]
    for method in methods:
        section = param(params, f"distill.{method}", dict, {})
        if "iterations" in section:
            lines.append(f"- {method}: {section['iterations']} iterations (paper: 20000), "
                         f"{section['batch_real']} real images per class per iteration (paper: 256), "
                         f"lr {section['lr']}, momentum {section['momentum']}")
    lines += ["", "## Backends", ""]
    for name in ("tags", "instances", "captions", "descriptions"):
        lines.append(f"- {name}: `{annotation_backend(name).get('backend', 'unknown')}`")
    for kind in ("image", "caption"):
        lines.append(f"- {kind} features: `{feature_metadata(kind).get('encoder', 'unknown')}`")
    lines += ["", "## Reproducibility", "", f"- seed: {param(params, 'seed', int)}",
              f"- device: {param(params, 'device', str)}"]
    lines += [f"- {k}: {v}" for k, v in sorted(versions().items())]
    lines += ["", "## Synthetic sets", ""]
    for method in methods:
        for ipc in ipcs:
            lines.append(f"![{method}, IPC {ipc}](figures/distilled/{method}-ipc{ipc}.png)")
    save_text("\n".join(lines) + "\n", REPORT)
    print(f"wrote {REPORT}")


if __name__ == "__main__":
    main()

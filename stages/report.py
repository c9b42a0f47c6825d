"""report: outputs/report.md, the method x IPC x architecture accuracy table and what produced it.

Reads outputs/metrics/{method}-ipcK.json for every (method, IPC) of params (any method name:
the table is built from the metrics files) and, when present, outputs/metrics/full.json (the
whole-train-split upper bound). Beside our default-net numbers it prints the papers' published
accuracy where a row exists for the same dataset, method, IPC and network (PUBLISHED below),
labelled with its source; their budgets are the papers', not ours.
"""
from __future__ import annotations

import json

from stages.annotate import annotation_backend
from stages.data import dataset_info
from stages.embed import feature_metadata
from stages.evaluate import FULL, METRICS
from stages.io import PipelineError, save_text
from stages.params import int_list, load_params, param, versions

REPORT = "outputs/report.md"

_DSDM = "DSDM paper (Li et al.), Table 1: ConvNet-3, 1500 evaluation epochs, mean of 5"
_MULTIMODAL = "multi-modal DD paper (Li, Reynaud, Kainz), Table 1: ConvNet, IPC 1, 128 px, pixel-space DC and DM"
# dataset -> where the numbers apply and {method: accuracy (%) at each of `ipcs`}; "full" = whole train set.
PUBLISHED = {
    "fashion_mnist": {"source": _DSDM, "nets": ("convnet3", "convnet"), "size": 28, "ipcs": (1, 10, 50),
                      "full": 93.5,
                      "rows": {"random": (51.4, 73.8, 82.5), "herding": (67.0, 71.1, 71.9),
                               "kcenter": (66.9, 54.7, 68.3), "dc": (70.5, 82.3, 83.6), "dsa": (70.6, 84.6, 88.7),
                               "dm": (70.7, 83.5, 88.1), "dsdm": (80.8, 87.3, 88.9)}},
    "cifar10": {"source": _DSDM, "nets": ("convnet3", "convnet"), "size": 32, "ipcs": (1, 10, 50), "full": 84.8,
                "rows": {"random": (14.4, 26.0, 43.4), "herding": (21.5, 31.6, 40.4), "kcenter": (21.5, 14.7, 27.0),
                         "dc": (28.3, 44.9, 53.9), "dsa": (28.8, 52.1, 60.6), "dm": (26.0, 48.9, 63.0),
                         "dsdm": (45.0, 66.5, 75.8)}},
    # ImageNet subsets at 128 px; "-" where our copy of the paper's table has no readable number
    **{name: {"source": _MULTIMODAL, "nets": ("convnet", "convnet5"), "size": 128, "ipcs": (1,),
              "rows": {"dm": (dm,), **({"dc": (dc,)} if dc else {})}}
       for name, dm, dc in (("imnet_a", 39.4, 43.2), ("imnet_b", 40.9, None), ("imnet_c", 39.0, 41.3),
                            ("imnet_d", 30.8, None), ("imnet_e", 27.0, 34.9), ("imagenette", 30.4, 34.2),
                            ("imagewoof", 20.7, 22.5), ("imnet_birds", 26.6, 32.0), ("imnet_fruits", 20.4, 21.0),
                            ("imnet_cats", 20.1, 22.0))},
}


def published(info: dict, net: str, method: str, ipc: int | None) -> float | None:
    """The published accuracy for this dataset/net/method/IPC (ipc None: whole train set), or None."""
    entry = PUBLISHED.get(info["name"])
    if entry is None or net not in entry["nets"] or info["height"] != entry["size"]:
        return None
    if ipc is None:
        return entry.get("full")
    if method not in entry["rows"] or ipc not in entry["ipcs"]:
        return None
    return entry["rows"][method][entry["ipcs"].index(ipc)]


def cell(m: dict | None) -> str:
    return "—" if m is None else f"{m['test_accuracy_mean']:.2f} ± {m['test_accuracy_std']:.2f}"


def table(rows: list[tuple[str, str, dict]], info: dict) -> list[str]:
    """rows: (method label, IPC label, metrics); columns: default net, its val, other nets, published."""
    nets = list(dict.fromkeys(n for _, _, m in rows for n in m.get("nets", [m["net"]])))
    default = rows[0][2]["net"]
    others = [n for n in nets if n != default]
    lines = ["| method | IPC | accuracy (%) | val accuracy (%) | " + "".join(f"{n} (%) | " for n in others) +
             f"published, {default} (%) |",
             "|---" * (5 + len(others)) + "|"]
    for method, ipc, m in rows:
        archs = m.get("architectures", {})
        pub = published(info, m["net"], m["method"], m["ipc"])
        lines.append(f"| {method} | {ipc} | {cell(m)} | {m['val_accuracy_mean']:.2f} | " +
                     "".join(f"{cell(archs.get(n))} | " for n in others) +
                     f"{'—' if pub is None else f'{pub:.1f}'} |")
    return lines


def main() -> None:
    params = load_params()
    methods = param(params, "distill.methods", list) + param(params, "distill.caption_methods", list, [])
    ipcs = int_list(params, "distill.ipcs")
    rows = []
    for method in methods:
        for ipc in ipcs:
            path = METRICS / f"{method}-ipc{ipc}.json"
            if not path.exists():
                raise PipelineError(f"{path} is missing: run `dvc repro evaluate`")
            rows.append((method, str(ipc), json.loads(path.read_text())))
    full = json.loads(FULL.read_text()) if FULL.exists() else None
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
    for method in methods:
        section = param(params, f"distill.{method}", dict, {})
        settings = ", ".join(f"{k} {v}" for k, v in section.items() if not isinstance(v, (dict, list)))
        lines.append(f"- {method}: {settings or 'no settings'}")
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

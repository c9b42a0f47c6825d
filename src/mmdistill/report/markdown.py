"""report: outputs/report.md, the method x IPC x architecture accuracy table and what produced it.

Reads outputs/metrics/{method}-ipcK.json (accuracies) and outputs/evaluate/{method}-ipcK.json (what
produced them) for every (method, IPC) of params (any method name: the table is built from these
files) and, when present, outputs/{metrics,evaluate}/full.json (the whole-train-split upper bound).
Beside our default-net numbers it prints the papers' published accuracy where a row exists for the
same dataset, method, IPC and network (PUBLISHED below), labelled with its source; their budgets are
the papers', not ours.
"""
from __future__ import annotations

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
PUBLISHED["fashion_mnist_captions"] = PUBLISHED["fashion_mnist"]  # the same images and labels, with label captions


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
    """One network's metrics (outputs/metrics/{run}.json[net]) as "mean ± std"."""
    return "—" if m is None else f"{m['test_accuracy_mean']:.2f} ± {m['test_accuracy_std']:.2f}"


def table(rows: list[tuple[str, str, dict, dict]], info: dict) -> list[str]:
    """rows: (method label, IPC label, evaluation record, metrics); columns: default net, its val, other nets,
    published. The record (outputs/evaluate/{run}.json) names the method, IPC and networks; the metrics
    (outputs/metrics/{run}.json) hold the accuracies by network."""
    nets = list(dict.fromkeys(n for _, _, record, _ in rows for n in record["nets"]))
    default = rows[0][2]["net"]
    others = [n for n in nets if n != default]
    lines = ["| method | IPC | accuracy (%) | val accuracy (%) | " + "".join(f"{n} (%) | " for n in others) +
             f"published, {default} (%) |",
             "|---" * (5 + len(others)) + "|"]
    for method, ipc, record, metrics in rows:
        m = metrics[record["net"]]
        pub = published(info, record["net"], record["method"], record["ipc"])
        lines.append(f"| {method} | {ipc} | {cell(m)} | {m['val_accuracy_mean']:.2f} | " +
                     "".join(f"{cell(metrics.get(n))} | " for n in others) +
                     f"{'—' if pub is None else f'{pub:.1f}'} |")
    return lines


def accuracy_by_ipc(runs: list[tuple[str, dict, dict]]) -> dict[str, list[dict]]:
    """The data of the accuracy-vs-IPC plots (dvc.yaml `plots`): (series name, evaluation record, metrics) of the
    distilled sets -> {series: [{"ipc": K, "test_accuracy": % of the default net}, ...] by ascending IPC}."""
    series: dict[str, list[dict]] = {}
    for name, record, metrics in runs:
        series.setdefault(name, []).append({"ipc": record["ipc"],
                                            "test_accuracy": metrics[record["net"]]["test_accuracy_mean"]})
    return {name: sorted(rows, key=lambda row: row["ipc"]) for name, rows in series.items()}


# Published numbers shown under a benchmark section whose rows include the method: (dataset, protocol, IPC, network,
# {method: "accuracy (%)"}); other data, resolution and evaluation than ours, so labelled by dataset, never compared
# in one column.
_VLCP = "VLCP supplement (Zou et al.), Tables 2-3"
BENCHMARK_PUBLISHED = {
    "vlcp": {"source": _VLCP, "rows": [
        *[("ImageNet-100, 256 px", "Minimax evaluation", ipc, net, {"random": r, "herding": h, "vlcp": v})
          for ipc, net, r, h, v in (
              (10, "ConvNet-6", "17.0 ± 0.3", "17.2 ± 0.3", "22.3 ± 0.2"),
              (10, "ResNetAP-10", "19.1 ± 0.4", "19.8 ± 0.3", "24.5 ± 0.1"),
              (10, "ResNet-18", "17.5 ± 0.5", "16.1 ± 0.2", "23.3 ± 0.5"),
              (20, "ConvNet-6", "24.8 ± 0.2", "24.3 ± 0.4", "29.3 ± 0.6"),
              (20, "ResNetAP-10", "26.7 ± 0.5", "27.6 ± 0.1", "32.3 ± 0.6"),
              (20, "ResNet-18", "25.5 ± 0.3", "24.7 ± 0.1", "31.5 ± 1.1"))],
        ("Tiny-ImageNet, 64 px", "RDED evaluation (soft labels)", 10, "ResNet-18 (modified)", {"vlcp": "42.6 ± 0.2"}),
        ("Tiny-ImageNet, 64 px", "RDED evaluation (soft labels)", 50, "ResNet-18 (modified)", {"vlcp": "55.5 ± 0.6"}),
    ]},
}


def published_beside(methods: list[str]) -> list[str]:
    """The BENCHMARK_PUBLISHED tables of the methods a benchmark section shows, one per source."""
    lines = []
    for method in dict.fromkeys(methods):
        entry = BENCHMARK_PUBLISHED.get(method)
        if entry is None:
            continue
        shown = [m for m in dict.fromkeys(m for *_, values in entry["rows"] for m in values) if m in methods or
                 m == method]
        lines += ["", f"Published beside ours ({entry['source']}; other datasets, resolutions and evaluation "
                      "protocols than this benchmark's, so read them by dataset, not against our column):", "",
                  "| dataset | protocol | IPC | network | " + " | ".join(f"{m} (%)" for m in shown) + " |",
                  "|---" * (4 + len(shown)) + "|"]
        lines += [f"| {dataset} | {protocol} | {ipc} | {net} | " + " | ".join(values.get(m, "—") for m in shown) + " |"
                  for dataset, protocol, ipc, net, values in entry["rows"]]
    return lines


def benchmark_table(name: str, result: dict) -> list[str]:
    """A generated accuracy benchmark result (benchmarks/results/NAME.json, python -m benchmarks.run NAME) as a
    section: its title, stamp and settings, then variant x method x IPC with the default net's test accuracy."""
    config, stamp = result["config"], result["stamp"]
    rows = [s for s in result["steps"] if s["step"] == "evaluate" and s.get("metrics")]
    settings = ", ".join(f"`{k}={v}`" for k, v in config.get("set", {}).items())
    machine = stamp["machine"]
    lines = [f"### {config['description']}", "",
             f"`python -m benchmarks.run {name}` (benchmarks/results/{name}.md), commit {stamp['commit'][:7]}, "
             f"{machine['cpu']} ({machine['cores']} cores, GPU: {', '.join(machine['gpus']) or 'none'}), "
             f"{'finished' if result['status'] == 'complete' else 'last written'} {stamp.get('finished') or 'never'} "
             f"(status {result['status']}). "
             f"Over params.yaml: {settings or 'nothing'}.", ""]
    variants = config.get("variants") or {}
    for variant, spec in variants.items():
        if spec.get("set"):
            lines.append(f"- variant {variant}: " + ", ".join(f"`{k}={v}`" for k, v in spec["set"].items()))
    if config["kind"] == "retrieval":
        return lines + retrieval_benchmark_table(rows)
    lines += ["", "| variant | method | IPC | accuracy (%) | set for this row |", "|---|---|---|---|---|"]
    row_sets = {(v, r["name"]): r.get("set") or {} for v, spec in variants.items() for r in spec.get("rows", [])}
    row_sets.update({(None, r["name"]): r.get("set") or {} for r in config.get("rows", [])})
    for s in rows:
        net = next(iter(s["metrics"]))
        extra = row_sets.get((s["variant"], s["row"]), row_sets.get((None, s["row"]), {}))
        lines.append(f"| {s['variant']} | {s['method']} | {s['ipc']} | {cell(s['metrics'][net])} | "
                     f"{', '.join(f'{k}={v}' for k, v in extra.items()) or '—'} |")
    return lines + published_beside([s["method"] for s in rows])


# ---- image-text retrieval (stage evaluate_retrieval) -------------------------------------------------------------

RETRIEVAL_KEYS = tuple(f"{side}_r{k}" for side in ("tr", "ir") for k in (1, 5, 10))
RETRIEVAL_COLUMNS = " | ".join(f"{k[:2].upper()} R@{k[4:]} (%)" for k in RETRIEVAL_KEYS)
# MTT-VL (Wu et al.) Table 1, Flickr30K, NFNet + BERT, 100 pairs, R@1 (%): (TR, IR); distillation mean ± std of 5
RETRIEVAL_PUBLISHED = {
    "source": "MTT-VL paper (Wu et al.), Table 1: Flickr30K, NFNet + BERT, 100 pairs, R@1; different data and budget",
    "pairs": 100,
    "rows": (("mttvl", "9.9 ± 0.3", "4.7 ± 0.2"), ("random", "1.3", "1.0"), ("herding", "1.1", "0.7"),
             ("kcenter", "0.6", "0.7"), ("forgetting", "1.2", "0.7")),
}
# MTT-VL (Wu et al.) Appendix B, Table 7: CIFAR-10 with its labels as captions, ConvNet-3 image trajectories and
# linear projections over BERT; per images per class (None: the whole train set), mean ± std (%):
# (MTT's image-only classification accuracy, TR R@1 with one caption "This is a {label}", TR R@1 with five captions)
LABEL_CAPTION_PUBLISHED = {
    "source": "MTT-VL paper (Wu et al.), Appendix B Table 7: CIFAR-10, ConvNet-3 + BERT, its budget; a different "
              "dataset, the same protocol (TR R@1 = an image matched with its class's caption)",
    "rows": {1: ("46.3 ± 0.8", "27.4 ± 1.0", "22.3 ± 1.0"), 10: ("65.3 ± 0.7", "35.9 ± 0.7", "33.2 ± 0.5"),
             50: ("71.6 ± 0.2", "66.8 ± 1.1", "62.0 ± 0.8"), None: ("84.8 ± 0.1", "79.6 ± 0.6", "80.3 ± 0.4")},
}
PAIR_SET_ORDER = ("full", "mttvl", "random", "herding", "kcenter", "forgetting", "pds", "pds_unclip")


def pair_set_key(name: str) -> tuple:
    """Sort key of a pair-set name (full, mttvl-N, random-N, coresets): by kind, then N."""
    kind, _, n = name.partition("-")
    return (PAIR_SET_ORDER.index(kind) if kind in PAIR_SET_ORDER else len(PAIR_SET_ORDER), kind,
            int(n) if n.isdigit() else 0)


def retrieval_cell(m: dict, key: str) -> str:
    return f"{m[f'test_{key}_mean']:.2f} ± {m[f'test_{key}_std']:.2f}"


def retrieval_table(runs: list[tuple[str, dict, dict]]) -> list[str]:
    """runs: (pair-set name, evaluation record, metrics) of stage evaluate_retrieval. One row per pair set and image
    encoder: test TR/IR R@1/5/10 (mean ± std over the students), the whole train split as the upper bound and the
    expected recall of a random ranking (the record's `chance`) as the lower bound, then MTT-VL's published
    Flickr30K rows, labelled as other data and budget."""
    runs = sorted(runs, key=lambda r: pair_set_key(r[0]))
    head = "| method | pairs | " + RETRIEVAL_COLUMNS
    lines = [head + " |", "|---" * (2 + len(RETRIEVAL_KEYS)) + "|"]
    for name, record, metrics in runs:
        kind = name.partition("-")[0]
        label = (f"whole train split, upper bound ({record['train_images']} images)" if kind == "full" else kind)
        pairs = "—" if kind == "full" else str(record["train_images"])
        for encoder, m in metrics.items():
            shown = label if len(metrics) == 1 else f"{label} ({encoder})"
            lines.append(f"| {shown} | {pairs} | " + " | ".join(retrieval_cell(m, k) for k in RETRIEVAL_KEYS) + " |")
    if not any(name == "full" for name, _, _ in runs):
        lines.append("| whole train split, upper bound | — | " + " | ".join("not run" for _ in RETRIEVAL_KEYS) + " |")
    chance = runs[0][1]["chance"]["test"]
    lines.append("| random ranking, lower bound | — | " + " | ".join(f"{chance[k]:.2f}" for k in RETRIEVAL_KEYS) + " |")
    return lines + retrieval_published()


def retrieval_benchmark_table(steps: list[dict]) -> list[str]:
    """The evaluated pair sets of a retrieval benchmark: variant x pair set x image encoder, test TR/IR R@1/5/10
    (mean ± std over its students), then MTT-VL's published rows."""
    head = "| variant | pair set | " + RETRIEVAL_COLUMNS
    lines = ["", head + " |", "|---" * (2 + len(RETRIEVAL_KEYS)) + "|"]
    for step in sorted(steps, key=lambda s: (s["variant"], pair_set_key(s["row"]))):
        for encoder, m in step["metrics"].items():
            shown = step["row"] if len(step["metrics"]) == 1 else f"{step['row']} ({encoder})"
            lines.append(f"| {step['variant']} | {shown} | " + " | ".join(retrieval_cell(m, k) for k in RETRIEVAL_KEYS)
                         + " |")
    return lines + retrieval_published()


def retrieval_published() -> list[str]:
    pub = RETRIEVAL_PUBLISHED
    return (["", f"Published beside ours ({pub['source']}):", "", "| method | pairs | TR R@1 (%) | IR R@1 (%) |",
             "|---|---|---|---|"]
            + [f"| {method} (published) | {pub['pairs']} | {tr} | {ir} |" for method, tr, ir in pub["rows"]])


def label_caption_table(runs: list[tuple[str, dict, dict]], classes: int, captions: int) -> list[str]:
    """MTT-VL Table 7's protocol on label captions: our distilled (mttvl-N, N a multiple of `classes`: N / classes
    pairs per class) and whole-train-split TR R@1 beside the published CIFAR-10 rows of the same size; sizes only
    one side has show "not run". `captions`: captions per image of our prepared set (1: Table 7's single caption)."""
    ours = {}
    for name, _, metrics in runs:
        kind, _, n = name.partition("-")
        if kind == "full":
            ours[None] = (name, metrics)
        elif kind == "mttvl" and int(n) % classes == 0:
            ours[int(n) // classes] = (name, metrics)
    pub = LABEL_CAPTION_PUBLISHED
    wording = "single caption" if captions == 1 else f"{captions} captions"
    lines = [f"| images per class | ours: set | ours: TR R@1 (%), {wording} | published: TR R@1 (%), single caption | "
             "published: TR R@1 (%), multi caption | published: classification (%, MTT) |", "|---" * 6 + "|"]
    for ipc in sorted(set(ours) | set(pub["rows"]), key=lambda k: (k is None, k or 0)):
        shown = "whole train split" if ipc is None else str(ipc)
        published = pub["rows"].get(ipc)
        classification, single, multi = published or ("—", "—", "—")
        if ipc in ours:
            name, metrics = ours[ipc]
            cells = [f"{name} ({encoder})" if len(metrics) > 1 else name for encoder in metrics]
            values = [retrieval_cell(m, "tr_r1") for m in metrics.values()]
        else:
            cells, values = ["not run"], ["—"]
        for cell, value in zip(cells, values):
            lines.append(f"| {shown} | {cell} | {value} | {single} | {multi} | {classification} |")
    return lines + ["", f"Published: {pub['source']}."]


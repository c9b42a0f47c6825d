"""Fashion-MNIST accuracy of caption_match and caption_concat beside random, dm and dsa -> benchmarks/accuracy_caption.md

    python -m mmdistill.data.sources && python -m benchmarks.accuracy_caption

The data, budgets and evaluation of benchmarks/accuracy.py (its reduced copy of data/prepared: the first
200 train, 10 val and 100 test images per class; caption_match and caption_concat get dsa's budgets, since
both are dsa's gradient matching plus a caption part). In the scratch directory it runs the annotation chain
on the default offline backends (tag, ground, caption, describe, embed_text), stage caption_head, stage
annotate_test (the 1,000 test images), then distill + evaluate per row, writing the table after each row.
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import torch
import yaml

from benchmarks.accuracy import (
    EVALUATE,
    TEST_PER_CLASS,
    TRAIN_PER_CLASS,
    VAL_PER_CLASS,
    reduced_copy,
    run_row,
)
from benchmarks.accuracy import budget as dsa_style_budget
from mmdistill.annotate import captions as caption
from mmdistill.annotate import descriptions as describe
from mmdistill.annotate import grounding as ground
from mmdistill.annotate import tags as tag
from mmdistill.core.config import load_params, positive
from mmdistill.core.runtime import resolve_device, versions
from mmdistill.core.storage import save_text
from mmdistill.embed import features as embed
from mmdistill.nn import caption_head
from mmdistill.stages import annotate_heldout as annotate_test

RUNS = [("caption_match", 1), ("caption_concat", 1), ("random", 1), ("dm", 1), ("dsa", 1),
        ("dm", 10), ("random", 10), ("caption_concat", 10), ("caption_match", 10), ("dsa", 10)]
WORK = Path("/tmp/accuracy-caption-benchmark")


def budget(method: str, ipc: int) -> dict:
    return dsa_style_budget("dsa" if method.startswith("caption_") else method, ipc)


def table(results: dict, timings: dict, head_metrics: str) -> str:
    lines = ["# Fashion-MNIST: caption_match and caption_concat at reduced CPU budgets", "",
             f"Command: `python -m mmdistill.data.sources && python -m benchmarks.accuracy_caption` ({os.cpu_count()} CPU "
             f"cores shared with other agents' jobs; torch {versions()['torch']}). Wall time so far: "
             f"{sum(timings.values()) / 60:.1f} minutes (annotation chain, caption_head and annotate_test: "
             f"{timings.get('prepare_captions', 0):.0f} s).", "",
             f"ConvNet-3; data: the first {TRAIN_PER_CLASS} train, {VAL_PER_CLASS} val and {TEST_PER_CLASS} test "
             "images per class of the prepared Fashion-MNIST (benchmarks/accuracy.py's copy); default offline "
             "backends (ImageNet tags, Otsu instances, template captions, MiniLM); test accuracy (%) mean ± std "
             f"over {EVALUATE['repeats']} evaluation networks, {EVALUATE['epochs']} epochs (SGD momentum 0.9, "
             "lr 0.01 x0.1 at half, DSA). caption_match/caption_concat use dsa's budget; their other settings are "
             "params.yaml's (lambda_1 = lambda_2 = 1, captions: source). caption_concat's classifier sees each "
             "test image's own label-free caption embedding (stage annotate_test).", "",
             "| method | IPC | test accuracy (%) | val accuracy (%) | distillation budget | distill s | evaluate s |",
             "|---|---|---|---|---|---|---|"]
    for method, ipc in RUNS:
        if (method, ipc) in results:
            r = results[(method, ipc)]
            b = ", ".join(f"{k} {v}" for k, v in budget(method, ipc).items()) or "-"
            lines.append(f"| {method} | {ipc} | {r['test_accuracy_mean']:.2f} ± {r['test_accuracy_std']:.2f} | "
                         f"{r['val_accuracy_mean']:.2f} | {b} | {timings[(method, ipc, 'distill')]:.0f} | "
                         f"{timings[(method, ipc, 'evaluate')]:.0f} |")
    missing = [f"{m} IPC {k}" for m, k in RUNS if (m, k) not in results]
    if missing:
        lines += ["", "Not run (out of time on the shared CPU): " + ", ".join(missing) + "."]
    lines += ["", f"Stage caption_head's `outputs/metrics/caption_head.json` in this run: `{head_metrics}`"]
    return "\n".join(lines) + "\n"


def prepare_captions(params: dict) -> None:
    """The annotation chain, the caption head and the test split's captions, in the scratch directory."""
    Path("params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for stage in (tag, ground, caption, describe):
        stage.main()
    embed.embed_texts(params, resolve_device(params), positive(params, "embed.batch_size"), 50000)
    caption_head.main()
    annotate_test.main()


def main() -> None:
    out = Path("benchmarks/accuracy_caption.md").resolve()
    base = load_params()
    base["evaluate"].update(EVALUATE)
    base["annotate"]["cache_dir"] = "data/annotation_cache"
    reduced_copy(Path("data/prepared").resolve(), WORK)
    os.chdir(WORK)
    timings, results = {}, {}
    start = time.perf_counter()
    prepare_captions(base)
    timings["prepare_captions"] = time.perf_counter() - start
    head_metrics = " ".join(Path("outputs/metrics/caption_head.json").read_text().split())
    only = set(sys.argv[1:])
    for method, ipc in RUNS:
        if only and f"{method}-{ipc}" not in only:
            continue
        run_row(method, ipc, base, budget(method, ipc), results, timings)
        save_text(table(results, timings, head_metrics), out)


if __name__ == "__main__":
    torch.set_num_threads(2)
    main()

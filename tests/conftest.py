"""Fixtures: a tiny Fashion-MNIST-format dataset and a throw-away project directory using it."""
from __future__ import annotations

import gzip
import os
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
if os.environ.get("PYTEST_XDIST_WORKER"):  # `make test` runs two workers on the two cores: one thread each
    os.environ["OMP_NUM_THREADS"] = "1"  # also for the stage subprocesses the tests start
    torch.set_num_threads(1)
else:
    torch.set_num_threads(2)


def write_idx(path: Path, array: np.ndarray) -> None:
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(">" + "I" * array.ndim, *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def tiny_images(labels: np.ndarray, seed: int) -> np.ndarray:
    """28x28 images: a bright rectangle whose size and place depend on the class, plus noise."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 30, size=(len(labels), 28, 28))
    for i, c in enumerate(labels):
        top, left = 3 + c % 5 * 2 + rng.integers(0, 2), 3 + c // 5 * 6 + rng.integers(0, 2)
        images[i, top:top + 8 + c % 3 * 2, left:left + 10] = 200 + rng.integers(0, 50)
    return images


@pytest.fixture(scope="session")
def fashion_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("fashion")
    for prefix, per_class, seed in (("train", 12, 0), ("t10k", 5, 1)):
        labels = np.repeat(np.arange(10), per_class)
        write_idx(root / f"{prefix}-images-idx3-ubyte.gz", tiny_images(labels, seed))
        write_idx(root / f"{prefix}-labels-idx1-ubyte.gz", labels)
    return root


def tiny_params(source: Path) -> dict:
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["device"] = "cpu"
    params["prepare"].update(source=str(source), val_per_class=2, max_train_per_class=0)
    params["tag"].update(input_size=32, batch_size=64)
    params["embed"].update(input_size=32, batch_size=64)
    params["select"]["lof_neighbors"] = 3
    params["select"]["forgetting"]["epochs"] = 2
    params["select"]["pds"]["clusters"] = [5]
    params["select"]["pair_coresets"]["sizes"] = [10]
    params["align"].update(epochs=3, batch_size=32)
    params["distill"]["ipcs"] = [1, 2]
    params["distill"]["methods"] = {group: [] for group in params["distill"]["methods"]}
    params["distill"]["methods"].update(selection=["random", "kmeans"], distribution=["dm"], masked=["masked_dm"])
    params["distill"]["distribution"].update(iterations=3, batch_real=4)
    # masked_dm's default full term is gradient matching (the paper's "Masked DM (DC)"): the gradient family's
    # settings apply to it; DC's `auto` loops are defined only for IPC 1, 10, 50, not the tiny IPC 2
    params["distill"]["gradient"].update(iterations=2, batch_real=4, outer_loop=2, inner_loop=1)
    params["distill"]["masked_dm"]["iterations"] = 2  # its own CPU budget (10) overrides the family's
    params["evaluate"].update(epochs=2, repeats=2, compile="")  # a cold compile costs more than a tiny evaluation
    params["imagetext"].update(stages=[], pair_sets=[], distill_sets=[])  # the image-text tests turn them on
    return params


def make_project(root: Path, fashion_dir: Path) -> Path:
    """A copy of the pipeline (code, dvc.yaml, tiny params.yaml) in `root`."""
    root.mkdir(parents=True)
    shutil.copytree(REPO / "src", root / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ("dvc.yaml", ".dvcignore", "tag_vocabulary.txt"):
        shutil.copy(REPO / name, root / name)
    shutil.copytree(REPO / "benchmarks/results", root / "benchmarks/results")  # stage report's report.benchmarks
    (root / "params.yaml").write_text(yaml.safe_dump(tiny_params(fashion_dir), sort_keys=False))
    return root


@pytest.fixture
def project(tmp_path, fashion_dir, monkeypatch) -> Path:
    """A throw-away project directory, made the cwd."""
    root = make_project(tmp_path / "project", fashion_dir)
    monkeypatch.chdir(root)
    return root


def set_params(root: Path, **updates) -> None:
    """Set dotted params, e.g. set_params(root, **{"distill.dm.iterations": 5})."""
    params = yaml.safe_load((root / "params.yaml").read_text())
    for key, value in updates.items():
        node = params
        *parents, last = key.split(".")
        for part in parents:
            node = node[part]
        node[last] = value
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def snapshot(root: Path, folders=("data", "outputs")) -> dict:
    """SHA-256 of every file under `folders` of project `root` (what a failed stage must leave unchanged)."""
    import hashlib
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for folder in folders for p in sorted((root / folder).rglob("*"))
            if p.is_file() and "__pycache__" not in p.parts}


def run_stage(stage: str, *args):
    """Run stage entry point `mmdistill.stages.<stage>` in-process, with `args` as its command line."""
    import importlib
    import sys
    module = importlib.import_module(f"mmdistill.stages.{stage}")
    old = sys.argv
    sys.argv = [module.__name__, *args]
    try:
        module.main()
    finally:
        sys.argv = old


@pytest.fixture(scope="session")
def annotated_template(tmp_path_factory, fashion_dir) -> Path:
    """Built once: a project after prepare, the annotation stages, both embed stages and forgetting."""
    root = make_project(tmp_path_factory.mktemp("annotated") / "project", fashion_dir)
    cwd = os.getcwd()
    os.chdir(root)
    try:
        for module in ("prepare", "tag", "ground", "caption", "describe"):
            run_stage(module)
        run_stage("embed", "--modality", "image")
        run_stage("embed", "--modality", "text")
        run_stage("forgetting")
    finally:
        os.chdir(cwd)
    return root


def working_copy(template: Path, tmp_path: Path, monkeypatch) -> Path:
    """A fresh copy of a template project (built once per session or module), made the cwd."""
    root = tmp_path / "project"
    shutil.copytree(template, root, symlinks=True)
    monkeypatch.chdir(root)
    return root


@pytest.fixture
def annotated(tmp_path, annotated_template, monkeypatch) -> Path:
    """A fresh copy of the annotated project (everything `select` reads), made the cwd."""
    return working_copy(annotated_template, tmp_path, monkeypatch)


def method_run(params: dict, method: str, ipc: int, train, seed: int = 0, latent: bool = False):
    """The Run a method's run function (or a shared loop) gets for `method` at `ipc`, on the CPU."""
    import torch

    from mmdistill.distill.engine import Run
    from mmdistill.distill.methods import resolve
    settings, where = resolve(params, method)
    return Run(method, ipc, latent, settings, where, params, train, torch.device("cpu"), seed, False)


def pytest_collection_modifyitems(items):
    """The end-to-end DVC test, the longest, starts first, so that the xdist workers of `make test` end together."""
    items.sort(key=lambda item: not item.nodeid.startswith("tests/test_pipeline.py"))

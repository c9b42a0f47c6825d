"""The bad-input suite (issue 14, "Must show"): every kind of bad input or fault a user can hit, run through a stage
entry point, must

  (a) exit with a status other than 0,
  (b) print ONE line on stderr (`error: ...`, besides progress bars) naming the culprit: the file, row, column,
      param or command-line option,
  (c) change no output: every file under the project's data/ and outputs/ has the same bytes before and after.

One project is built once (prepare, the annotation stages, embed, forgetting, select, distill and evaluate of
random, kmeans and dm at IPC 1, and the report, on the tiny dataset of tests/conftest.py) and copied per case. A
case runs the stage in-process through its entry point's own wrapper (`mmdistill.stages.run_stage(main)`, what
`python -m mmdistill.stages.X` runs; much cheaper than a new interpreter), or, where marked, as the subprocess
`python -m mmdistill.stages.X` with PYTHONPATH=<project>/src (the cases whose fault needs another process: a
read-only or full file system in a private mount namespace, and a sample of the others to check the real entry
point).
"""
from __future__ import annotations

import gzip
import importlib
import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import yaml

from tests.conftest import run_stage, set_params, tiny_images, working_copy, write_idx

PROGRESS = re.compile(r"^.*\d+%\|.*\|")  # a tqdm bar (its last \r-segment), not a message


def snapshot(root: Path) -> dict:
    """Every file under data/ and outputs/: its bytes' SHA-256, inode and mtime (a file rewritten with the same
    bytes counts as changed: the stage wrote before it failed)."""
    import hashlib
    out = {}
    for folder in ("data", "outputs"):
        for path in sorted((root / folder).rglob("*")):
            if path.is_file():
                st = path.stat()
                out[str(path.relative_to(root))] = (hashlib.sha256(path.read_bytes()).hexdigest(), st.st_ino,
                                                    st.st_mtime_ns)
    return out


@pytest.fixture(scope="module")
def template(tmp_path_factory, annotated_template) -> Path:
    """The annotated project after select, distill + evaluate of random, kmeans, dm at IPC 1, and report."""
    root = tmp_path_factory.mktemp("bad_input") / "project"
    shutil.copytree(annotated_template, root)
    set_params(root, **{"distill.ipcs": [1], "distill.methods.selection": ["random", "kmeans"],
                        "distill.methods.distribution": ["dm"], "distill.methods.masked": [],
                        "distill.distribution.iterations": 2, "evaluate.epochs": 1, "evaluate.repeats": 1,
                        "evaluate.nets": ["convnet3"]})
    cwd = os.getcwd()
    os.chdir(root)
    try:
        run_stage("selection")
        for method in ("random", "kmeans", "dm"):
            run_stage("distill", "--method", method, "--ipc", "1")
            run_stage("evaluate", "--method", method, "--ipc", "1")
        run_stage("report")
    finally:
        os.chdir(cwd)
    return root


@pytest.fixture
def case_project(tmp_path, template, monkeypatch) -> Path:
    monkeypatch.delenv("MMDISTILL_DEBUG", raising=False)
    return working_copy(template, tmp_path, monkeypatch)


# ------------------------------------------------------------------------------------------- how a case breaks

def params_of(root: Path) -> dict:
    return yaml.safe_load((root / "params.yaml").read_text())


def edit_params_text(old: str, new: str) -> Callable:
    def breakage(root: Path):
        text = (root / "params.yaml").read_text()
        assert old in text, old
        (root / "params.yaml").write_text(text.replace(old, new, 1))
    return breakage


def set_param(key: str, value) -> Callable:
    return lambda root: set_params(root, **{key: value})


def rename_param(key: str, new_name: str) -> Callable:
    def breakage(root: Path):
        params = params_of(root)
        *parents, last = key.split(".")
        node = params
        for part in parents:
            node = node[part]
        node[new_name] = node.pop(last)
        (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return breakage


def delete_param(key: str) -> Callable:
    def breakage(root: Path):
        params = params_of(root)
        *parents, last = key.split(".")
        node = params
        for part in parents:
            node = node[part]
        del node[last]
        (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return breakage


def fashion_source(root: Path, labels_train=None, images_train=None, swap=False, truncate=False) -> Path:
    """A copy of the tiny Fashion-MNIST idx files under root/source, with one fault; prepare.source points there."""
    source = root / "source"
    source.mkdir()
    for prefix, per_class, seed in (("train", 12, 0), ("t10k", 5, 1)):
        labels = np.repeat(np.arange(10), per_class)
        images = tiny_images(labels, seed)
        if prefix == "train":
            labels = labels_train(labels) if labels_train else labels
            images = images_train(images) if images_train else images
        names = (f"{prefix}-images-idx3-ubyte.gz", f"{prefix}-labels-idx1-ubyte.gz")
        if swap and prefix == "train":
            names = names[::-1]
        write_idx(source / names[0], images)
        write_idx(source / names[1], labels)
    if truncate:
        path = source / "train-images-idx3-ubyte.gz"
        with gzip.open(path, "rb") as f:
            data = f.read()
        with gzip.open(path, "wb") as f:
            f.write(data[:len(data) // 2])
    set_params(root, **{"prepare.source": str(source)})
    return source


def out_of_range_labels(labels):
    labels = labels.copy()
    labels[17] = 12
    return labels


def image_folder(root: Path, classes: dict) -> Path:
    """An image_folder source: {class: [PNG bytes or a fault, ...]}; prepare.dataset/source point there."""
    from mmdistill.core.storage import png_bytes
    source = root / "folder"
    rng = np.random.default_rng(0)
    for name, images in classes.items():
        (source / name).mkdir(parents=True)
        for i, data in enumerate(images):
            blob = data if isinstance(data, bytes) else png_bytes(rng.integers(0, 255, (8, 8), dtype=np.uint8))
            (source / name / f"img_{i:03d}.png").write_bytes(blob)
    set_params(root, **{"prepare.dataset": "image_folder", "prepare.source": str(source), "prepare.image_size": 8,
                        "prepare.channels": 1, "prepare.val_per_class": 1})
    return source


def rewrite_parquet(path: str, change: Callable) -> Callable:
    """Rewrite one Parquet file in place through `change(table) -> table`, keeping its metadata."""
    def breakage(root: Path):
        file = root / path
        table = pq.read_table(file)
        new = change(table)
        pq.write_table(new.replace_schema_metadata(table.schema.metadata), file)
    return breakage


def replace_column(name: str, array: Callable) -> Callable:
    def change(table: pa.Table) -> pa.Table:
        return table.set_column(table.column_names.index(name), name, array(table[name]))
    return change


def rewrite_metadata(path: str, section: str, **updates) -> Callable:
    def breakage(root: Path):
        file = root / path
        table = pq.read_table(file)
        meta = dict(table.schema.metadata)
        info = json.loads(meta[section.encode()])
        info.update(updates)
        meta[section.encode()] = json.dumps(info).encode()
        pq.write_table(table.replace_schema_metadata(meta), file)
    return breakage


def truncate(path: str, keep: float = 0.5) -> Callable:
    def breakage(root: Path):
        data = (root / path).read_bytes()
        (root / path).write_bytes(data[:int(len(data) * keep)])
    return breakage


def remove(path: str) -> Callable:
    def breakage(root: Path):
        target = root / path
        shutil.rmtree(target) if target.is_dir() else target.unlink()
    return breakage


def poison_features(kind: str, row: int, value=np.nan) -> Callable:
    def breakage(root: Path):
        shard = root / f"data/features/{kind}/vectors-00000.npy"
        array = np.load(shard)
        array[row, 3] = value
        np.save(shard, array)
    return breakage


def poison_tensor(path: str, key: str, index, value=float("nan")) -> Callable:
    def breakage(root: Path):
        obj = torch.load(root / path, weights_only=True)
        obj[key][index] = value
        torch.save(obj, root / path)
    return breakage


def write_file(path: str, data: bytes) -> Callable:
    def breakage(root: Path):
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_bytes(data)
    return breakage


def both(*breakages: Callable) -> Callable:
    def breakage(root: Path):
        for b in breakages:
            b(root)
    return breakage


# ------------------------------------------------------------------------------------------------- the cases

@dataclass
class Case:
    id: str
    stage: str
    args: tuple
    breakage: Callable
    culprit: str              # a regex the one line must match: it names the file, row, column or param
    subprocess: bool = False  # run `python -m mmdistill.stages.X` instead of in-process
    check: Callable | None = None  # further checks on the project after the failure
    marks: tuple = field(default_factory=tuple)


DISTILL_DM = ("--method", "dm", "--ipc", "1")
EVAL_DM = ("--method", "dm", "--ipc", "1")
NOT_WRITTEN = "data/distilled/dm-ipc1.pt"

CASES = [
    # ---- params: misspelt, missing, NaN, zero, negative, wrong type, invalid YAML (item 12, restructure)
    Case("misspelt-iterations", "distill", DISTILL_DM, set_param("distill.dm.iteratons", 5),
         r"unknown param 'distill\.dm\.iteratons'.*did you mean 'distill\.dm\.iterations'", subprocess=True),
    Case("misspelt-checkpoint_every", "distill", DISTILL_DM,
         rename_param("distill.engine.checkpoint_every", "checkpoint_evry"),
         r"unknown param 'distill\.engine\.checkpoint_evry'.*'distill\.engine\.checkpoint_every'"),
    Case("misspelt-evaluate-repeats", "evaluate", EVAL_DM, rename_param("evaluate.repeats", "repeat"),
         r"unknown param 'evaluate\.repeat'.*did you mean 'evaluate\.repeats'"),
    Case("missing-masked_weight", "distill", ("--method", "masked_dm", "--ipc", "1"),
         delete_param("distill.masked_dm.masked_weight"), r"missing param 'distill\.masked_dm\.masked_weight'"),
    Case("nan-param", "evaluate", EVAL_DM, set_param("evaluate.lr", float("nan")),
         r"param 'evaluate\.lr' must be a finite number, got nan"),
    Case("zero-distill-lr", "distill", DISTILL_DM, set_param("distill.distribution.lr", 0),
         r"param 'distill\.distribution\.lr' must be > 0, got 0"),
    Case("zero-method-lr", "distill", DISTILL_DM, set_param("distill.dm.lr", 0),
         r"param 'distill\.dm\.lr' must be > 0, got 0"),
    Case("zero-evaluate-lr", "evaluate", EVAL_DM, set_param("evaluate.lr", 0), r"param 'evaluate\.lr' must be > 0"),
    Case("negative-max_train_per_class", "prepare", (), set_param("prepare.max_train_per_class", -5),
         r"param 'prepare\.max_train_per_class' must be >= 0, got -5"),
    Case("zero-test_fraction", "prepare", (), set_param("prepare.test_fraction", 0),
         r"param 'prepare\.test_fraction' must be > 0"),
    Case("negative-ipc", "selection", (), set_param("distill.ipcs", [-1]), r"param 'distill\.ipcs\[0\]' must be >= 1"),
    Case("wrong-type", "evaluate", EVAL_DM, set_param("evaluate.epochs", "ten"),
         r"param 'evaluate\.epochs' must be int, got str 'ten'"),
    Case("invalid-yaml", "prepare", (), edit_params_text("seed: 0\n", "seed: [0\n"), r"params\.yaml:\d+: invalid YAML",
         subprocess=True),
    Case("duplicate-yaml-key", "prepare", (), edit_params_text("seed: 0\n", "seed: 0\nseed: 1\n"),
         r"params\.yaml:\d+: invalid YAML \(duplicate key 'seed'\)"),
    Case("params-not-utf8", "prepare", (), lambda root: (root / "params.yaml").write_bytes(
        (root / "params.yaml").read_bytes().replace(b"seed: 0", b"seed: 0 # \xe9t\xe9", 1)),
        r"params\.yaml:\d+: not UTF-8 text"),

    # ---- the command line (item 18)
    Case("evaluate-method-path", "evaluate", ("--method", "../../x", "--ipc", "1"), lambda root: None,
         r"--method '\.\./\.\./x' is not a registered method", subprocess=True),
    Case("distill-method-path", "distill", ("--method", "../../x", "--ipc", "1"), lambda root: None,
         r"unknown method '\.\./\.\./x'"),
    Case("evaluate-negative-ipc", "evaluate", ("--method", "dm", "--ipc", "-1"), lambda root: None,
         r"--ipc must be a positive integer, got -1"),
    Case("distill-ipc-not-a-number", "distill", ("--method", "dm", "--ipc", "one"), lambda root: None,
         r"argument --ipc: invalid int value: 'one'", subprocess=True),
    Case("embed-unknown-modality", "embed", ("--modality", "audio"), lambda root: None,
         r"argument --modality: invalid choice: 'audio'"),

    # ---- the source data of prepare (item 13)
    Case("labels-out-of-range", "prepare", (), lambda root: fashion_source(root, labels_train=out_of_range_labels),
         r"train-labels-idx1-ubyte\.gz.*12"),
    Case("swapped-idx-files", "prepare", (), lambda root: fashion_source(root, swap=True),
         r"train-(images|labels)-idx\d-ubyte\.gz"),
    Case("truncated-idx-file", "prepare", (), lambda root: fashion_source(root, truncate=True),
         r"train-images-idx3-ubyte\.gz"),
    Case("missing-source", "prepare", (), set_param("prepare.source", "/no/such/folder"),
         r"param 'prepare\.source': /no/such/folder is not a directory"),
    Case("empty-val-split", "prepare", (), set_param("prepare.val_per_class", 12),
         r"class 'T-shirt/top' has 12 train images, not more than prepare\.val_per_class=12"),
    Case("zero-std-metadata", "distill", DISTILL_DM,
         rewrite_metadata("data/prepared/train-00000.parquet", "dataset", std=[0.0]),
         r"data/prepared: metadata 'dataset\.std' is \[0\.0\], expected finite numbers > 0"),
    Case("corrupt-image", "prepare", (), lambda root: image_folder(root, {"a": [0, 0, 0, b"not a png"],
                                                                           "b": [0, 0, 0, 0]}),
         r"corrupt or unreadable image: .*a/img_003\.png"),
    Case("single-class", "prepare", (), lambda root: image_folder(root, {"a": [0, 0, 0]}), r"at least 2 classes"),

    # ---- prepared data: corrupt, wrong dtype, bad metadata, missing (items 11, 17)
    Case("corrupt-prepared-shard", "distill", ("--method", "random", "--ipc", "1"),
         truncate("data/prepared/train-00000.parquet"), r"data/prepared/train-00000\.parquet: not a readable Parquet"),
    Case("label-dtype", "distill", ("--method", "random", "--ipc", "1"),
         rewrite_parquet("data/prepared/train-00000.parquet",
                         replace_column("label", lambda c: pa.array([str(v) for v in c.to_pylist()])))
         , r"train-00000\.parquet: column 'label' has type string, expected an integer"),
    Case("nan-normalisation", "distill", DISTILL_DM,
         rewrite_metadata("data/prepared/train-00000.parquet", "dataset", std=[float("nan")]),
         r"data/prepared: metadata 'dataset\.std' is \[nan\]"),
    Case("missing-prepared", "distill", ("--method", "random", "--ipc", "1"), remove("data/prepared"),
         r"no Parquet data at data/prepared/train"),

    # ---- features, selections, forgetting events (items 11, 17: NaN never reaches sklearn or a head)
    Case("nan-caption-features", "align", (), poison_features("caption", 5),
         r"data/features/caption/vectors-00000\.npy: row 5 \(uid [\w-]+\) holds NaN or inf"),
    Case("nan-image-features-select", "selection", (), poison_features("image", 3),
         r"data/features/image/vectors-00000\.npy: row 3 \(uid [\w-]+\) holds NaN or inf"),
    Case("inf-image-features-prototypes", "prototypes", (), poison_features("image", 7, np.inf),
         r"data/features/image/vectors-00000\.npy: row 7 .* holds NaN or inf"),
    Case("corrupt-feature-shard", "selection", (), truncate("data/features/image/vectors-00000.npy", 0.3),
         r"data/features/image/vectors-00000\.npy: not a readable feature shard"),
    Case("missing-feature-shard", "selection", (), remove("data/features/image/vectors-00000.npy"),
         r"data/features/image: index has \d+ rows but shards hold 0"),
    Case("nan-kmeans-centre", "prototypes", (),
         rewrite_parquet("data/selections/kmeans-ipc1.parquet", replace_column(
             "center", lambda c: pa.array([[float("nan")] * len(c[0].as_py())] + c.to_pylist()[1:],
                                          pa.list_(pa.float32())))),
         r"kmeans-ipc1\.parquet: column 'center' holds NaN or inf \(row 0\)"),
    Case("selection-rank-dtype", "distill", ("--method", "kmeans", "--ipc", "1"),
         rewrite_parquet("data/selections/kmeans-ipc1.parquet", replace_column(
             "cluster", lambda c: pa.array([float(v) for v in c.to_pylist()]))),
         r"kmeans-ipc1\.parquet: column 'cluster' has type double, expected an integer"),
    Case("forgetting-events-dtype", "selection", (),
         rewrite_parquet("data/forgetting/events.parquet", replace_column(
             "forgetting_events", lambda c: pa.array([str(v) for v in c.to_pylist()]))),
         r"events\.parquet: column 'forgetting_events' has type string"),
    Case("corrupt-annotations", "embed", ("--modality", "text"), truncate("data/annotations/captions.parquet"),
         r"data/annotations/captions\.parquet: not a readable Parquet file"),

    # ---- distilled sets, checkpoints, the distillation itself (items 11, 14)
    Case("nan-distilled-set", "evaluate", EVAL_DM, poison_tensor("data/distilled/dm-ipc1.pt", "images", (3, 0, 5, 5)),
         r"data/distilled/dm-ipc1\.pt: 'images' holds NaN or inf \(row 3\)", subprocess=True),
    Case("truncated-distilled-set", "evaluate", EVAL_DM, truncate("data/distilled/dm-ipc1.pt"),
         r"data/distilled/dm-ipc1\.pt: not a readable tensor file"),
    Case("missing-distilled-set", "evaluate", ("--method", "herding", "--ipc", "1"), lambda root: None,
         r"no tensor file at data/distilled/herding-ipc1\.pt"),
    Case("diverging-lr", "distill", DISTILL_DM, both(set_param("distill.dm.lr", 1e30),
                                                     set_param("distill.dm.iterations", 4),
                                                     set_param("distill.engine.log_every", 100),
                                                     set_param("distill.engine.checkpoint_every", 100)),
         r"distill dm-ipc1: the loss is (nan|inf) at iteration [1-3].*'distill\.dm\.lr'"),
    Case("resume-other-data", "distill", (*DISTILL_DM, "--resume"),  # the template's checkpoint, other pixels
         rewrite_parquet("data/prepared/train-00000.parquet",
                         lambda t: t.set_column(t.column_names.index("image"), "image",
                                                pa.array(t["image"].to_pylist()[::-1], pa.binary()))),
         r"data/checkpoints/dm-ipc1\.pt was made from other data \(the prepared train split"),

    # ---- annotation inputs (items 17, 18)
    Case("vocabulary-not-utf8", "tag", (), both(set_param("tag.backend", "clip"),
                                                write_file("vocab.txt", "shirt\nbag\ncaf\xe9\n".encode("latin-1")),
                                                set_param("tag.clip.vocabulary", "vocab.txt")),
         r"param 'tag\.clip\.vocabulary': vocabulary file vocab\.txt:3: not UTF-8 text"),
    Case("plugin-subprocess-call", "tag", (), both(set_param("tag.backend", "plugin"),
                                                   set_param("tag.plugin.class", "subprocess:call"),
                                                   lambda root: set_params(root, **{"tag.plugin.kwargs": {
                                                       "args": ["touch", str(root / "outputs/pwned")]}})),
         r"param 'tag\.plugin\.class': 'subprocess:call' is not a tagger class",
         check=lambda root: not (root / "outputs/pwned").exists()),
    Case("plugin-not-a-class", "tag", (), both(set_param("tag.backend", "plugin"),
                                               set_param("tag.plugin.class", "json:loads")),
         r"param 'tag\.plugin\.class': 'json:loads' is not a tagger class"),

    # ---- the report (item 19)
    Case("stale-record", "report", (), set_param("distill.dm.lr", 7.0),
         r"outputs/evaluate/dm-ipc1\.json \(run dm-ipc1\) was made with distill\.lr = .*params\.yaml has 7\.0"),
    Case("missing-record", "report", (), remove("outputs/evaluate/kmeans-ipc1.json"),
         r"outputs/evaluate/kmeans-ipc1\.json is missing"),

    # ---- the file system (item 17): a file where a folder should be, read-only, full
    Case("output-folder-is-a-file", "evaluate", EVAL_DM,
         both(remove("outputs/metrics"), write_file("outputs/metrics", b"")),
         r"cannot write outputs/metrics/dm-ipc1\.json: not a directory"),
]


def run_in_process(stage: str, args: tuple, capsys) -> tuple[int, str]:
    """`python -m mmdistill.stages.<stage> *args` in this process: the module's main under the entry point's
    wrapper run_stage -> (exit status, stderr). A raw exception escaping the wrapper fails the test."""
    from mmdistill.stages import run_stage as entry_point
    module = importlib.import_module(f"mmdistill.stages.{stage}")
    capsys.readouterr()
    old = sys.argv
    sys.argv = [module.__name__, *args]
    try:
        entry_point(module.main)
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    finally:
        sys.argv = old
    return code, capsys.readouterr().err


def run_subprocess(root: Path, stage: str, args: tuple, wrap: tuple = ()) -> tuple[int, str]:
    env = dict(os.environ, PYTHONPATH=str(root / "src"), PYTHONDONTWRITEBYTECODE="1")
    env.pop("MMDISTILL_DEBUG", None)
    result = subprocess.run([*wrap, sys.executable, "-m", f"mmdistill.stages.{stage}", *args], cwd=root, env=env,
                            capture_output=True, text=True, timeout=300)
    return result.returncode, result.stderr


def one_line(stderr: str) -> str:
    """The one message line of stderr (progress bars aside); fails unless there is exactly one."""
    lines = [line for line in stderr.splitlines() if line.strip() and not PROGRESS.match(line.split("\r")[-1])]
    assert len(lines) == 1, f"stderr is not one line:\n{stderr}"
    return lines[0]


def check_failure(root: Path, code: int, stderr: str, culprit: str, before: dict) -> None:
    assert code not in (0, None), f"exit status {code}; stderr:\n{stderr}"
    line = one_line(stderr)
    assert line.startswith("error: ") and re.search(culprit, line), line
    assert snapshot(root) == before, "an output changed"


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id, marks=c.marks) for c in CASES])
def test_bad_input_fails_with_one_line_and_changes_nothing(case, case_project, capsys):
    case.breakage(case_project)
    before = snapshot(case_project)
    if case.subprocess:
        code, stderr = run_subprocess(case_project, case.stage, case.args)
    else:
        code, stderr = run_in_process(case.stage, case.args, capsys)
    check_failure(case_project, code, stderr, case.culprit, before)
    if case.check is not None:
        assert case.check(case_project)


def can_mount() -> bool:
    """Whether this process may make a private mount namespace and mount a tmpfs in it (root in a container)."""
    probe = subprocess.run(["unshare", "-m", "sh", "-c", "mount -t tmpfs -o size=4k tmpfs /mnt"], capture_output=True)
    return probe.returncode == 0


@pytest.mark.parametrize("fault, culprit", [
    pytest.param("ro", r"cannot write outputs/metrics/dm-ipc1\.json: Read-only file system", id="read-only"),
    pytest.param("size=8k", r"cannot write outputs/(metrics|evaluate)/dm-ipc1\.json: No space left on device",
                 id="full", marks=pytest.mark.slow),  # it trains the networks before the write fails
])
def test_read_only_or_full_output_folder(case_project, fault, culprit):
    """evaluate with outputs/ on a read-only file system (refused before any training: the writability check) or a
    full one (8 KiB: the write fails after training, naming the file); a private mount namespace, so the project's
    own outputs/ stay as they are (they must: no output changed)."""
    if not shutil.which("unshare") or not can_mount():
        pytest.skip("needs unshare and mount (root or CAP_SYS_ADMIN)")
    before = snapshot(case_project)
    outputs = case_project / "outputs"
    # a copy of outputs/ on its own file system inside the namespace, then mounted over outputs/
    script = (f"mkdir -p /tmp/outputs-copy-$$ && mount -t tmpfs -o size=1m tmpfs /tmp/outputs-copy-$$ && "
              f"cp -a {outputs}/. /tmp/outputs-copy-$$/ && mount --bind /tmp/outputs-copy-$$ {outputs} && "
              + ("mount -o remount,bind,ro " + str(outputs) if fault == "ro" else
                 f"mount -o remount,size={fault[5:]} /tmp/outputs-copy-$$ 2>/dev/null; "
                 f"dd if=/dev/zero of={outputs}/filler bs=1k count=100000 2>/dev/null; true")
              + " && exec \"$@\"")
    code, stderr = run_subprocess(case_project, "evaluate", EVAL_DM, wrap=("unshare", "-m", "sh", "-c", script, "sh"))
    check_failure(case_project, code, stderr, culprit, before)


def test_a_corrupt_cache_shard_is_recomputed_and_named(case_project, capsys):
    """A corrupt (truncated) annotation-cache shard is not a failure: it is removed with a warning naming it and
    its images are annotated again; the stage's output is the same bytes as before."""
    shard = sorted((case_project / "data/annotation_cache/tag").rglob("shard-*.parquet"))[0]
    shard.write_bytes(shard.read_bytes()[:100])
    tags = (case_project / "data/annotations/tags.parquet").read_bytes()
    code, stderr = run_in_process("tag", (), capsys)
    assert code == 0 and re.search(rf"warning: .*{shard.name}: corrupt annotation-cache shard removed", stderr)
    assert (case_project / "data/annotations/tags.parquet").read_bytes() == tags


def test_the_suite_has_at_least_40_cases():
    assert len(CASES) >= 40 and len({c.id for c in CASES}) == len(CASES)


def test_mmdistill_debug_keeps_the_traceback(case_project, monkeypatch):
    """MMDISTILL_DEBUG=1: the entry point re-raises the error (the full traceback) instead of printing one line."""
    from mmdistill.core.storage import PipelineError
    from mmdistill.stages import run_stage as entry_point
    from mmdistill.stages.evaluate import main
    monkeypatch.setenv("MMDISTILL_DEBUG", "1")
    monkeypatch.setattr(sys, "argv", ["evaluate", "--method", "../../x", "--ipc", "1"])
    with pytest.raises(PipelineError, match="is not a registered method"):
        entry_point(main)

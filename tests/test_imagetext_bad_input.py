"""Issue 15's bad image-text input ("Must show"), run through the stage entry points after a good run of the chain
(prepare, embed_pairs, buffer, distill_pairs, evaluate_retrieval on a tiny Karpathy layout) has written data/ and
outputs/: each exits with status 1 and ONE line `error: ...` naming the culprit (the JSON entry and file, the
prepared image, the pair set and the train split's size), and leaves every file under data/ and outputs/ as it was
(same bytes, inode and mtime). The criteria and the helpers are those of the general bad-input suite
(tests/test_bad_input.py)."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.conftest import make_project, run_stage, set_params
from tests.test_bad_input import check_failure, run_in_process, snapshot
from tests.test_prepare_text import flickr_layout, karpathy_params
from tests.test_retrieval import HashEncoder


@pytest.fixture(scope="module")
def chain(tmp_path_factory, fashion_dir) -> Path:
    """A project after the image-text chain on a tiny Flickr-shaped layout (6 train, 2 val, 3 test images, five
    captions each); the layout is in the project's folder `flickr/`."""
    root = make_project(tmp_path_factory.mktemp("imagetext_bad_input") / "project", fashion_dir)
    source = flickr_layout(root / "flickr")
    set_params(root, **karpathy_params(source), **{
        "imagetext.stages": ["on"], "imagetext.pair_sets": ["random-3"], "imagetext.distill_sets": ["mttvl-3"],
        "imagetext.model.dim": 8, "imagetext.buffer.experts": 1, "imagetext.buffer.expert_epochs": 2,
        "imagetext.buffer.batch_size": 4, "imagetext.mttvl.iterations": 1, "imagetext.mttvl.expert_epochs": 1,
        "imagetext.mttvl.max_start_epoch": 1, "imagetext.mttvl.syn_steps": 1, "imagetext.evaluate.repeats": 1,
        "imagetext.evaluate.epochs": 1, "imagetext.evaluate.batch_size": 4})
    cwd = os.getcwd()
    os.chdir(root)
    try:
        with pytest.MonkeyPatch.context() as mp:
            from mmdistill.embed import features
            mp.setitem(features.TEXT_ENCODERS, "minilm", lambda params, device: HashEncoder())
            run_stage("prepare")
            run_stage("embed_pairs")
            run_stage("buffer")
            run_stage("distill_pairs", "--pairs", "mttvl-3")
            run_stage("evaluate_retrieval", "--pairs", "random-3")
    finally:
        os.chdir(cwd)
    return root


@pytest.fixture
def case_project(tmp_path, chain, monkeypatch) -> Path:
    root = tmp_path / "project"
    shutil.copytree(chain, root)
    set_params(root, **{"prepare.source": str(root / "flickr")})     # the copy's layout, which the case breaks
    monkeypatch.chdir(root)
    return root


def edit_json(change):
    def breakage(root: Path):
        path = root / "flickr/dataset_flickr8k.json"
        data = json.loads(path.read_text())
        change(data["images"])
        path.write_text(json.dumps(data))
    return breakage


def remove_image(name: str):
    def breakage(root: Path):
        (root / "flickr/flickr8k-images" / name).unlink()
    return breakage


def empty_prepared_captions(row: int):
    """The prepared train split with image `row`'s captions emptied (an image-text set whose text went missing)."""
    def breakage(root: Path):
        path = next((root / "data/prepared").glob("train-*.parquet"))
        table = pq.read_table(path)
        captions = table["captions"].to_pylist()
        captions[row] = []
        table = table.set_column(table.column_names.index("captions"), "captions",
                                 pa.array(captions, table.schema.field("captions").type))
        pq.write_table(table, path)
    return breakage


CASES = [
    # the Karpathy JSON (stage prepare)
    pytest.param("prepare", (), remove_image("1003_photo.jpg"),
                 r"dataset_flickr8k\.json: images\[3\] \(1003_photo\.jpg\): image missing from \S*flickr8k-images",
                 id="json-image-missing-from-folder"),
    pytest.param("prepare", (), edit_json(lambda images: images[4].update(sentences=[])),
                 r"dataset_flickr8k\.json: images\[4\] \(1004_photo\.jpg\): no captions", id="image-without-captions"),
    pytest.param("prepare", (), edit_json(lambda images: images[2].update(split="dev")),
                 r"images\[2\] \(1002_photo\.jpg\): unknown split 'dev'; valid: train, restval, val, test",
                 id="unknown-split"),
    pytest.param("prepare", (), edit_json(lambda images: images[7]["sentences"][3].update(raw=42)),
                 r"images\[7\] \(1007_photo\.jpg\): caption sentences\[3\]\.raw is int 42, not a string",
                 id="caption-not-a-string"),
    # a prepared image without captions reaching the image-text stages (stage embed_pairs)
    pytest.param("embed_pairs", (), empty_prepared_captions(2),
                 r"data/prepared/train: image \S+ has no captions", id="prepared-image-without-captions"),
    # more pairs than the train split's 6 images, for each stage that makes or reads a pair set
    pytest.param("distill_pairs", ("--pairs", "mttvl-7"), lambda root: None,
                 r"pair set 'mttvl-7': 7 pairs requested, but the train split holds 6 images", id="mttvl-too-many"),
    pytest.param("select_pairs", ("--pairs", "herding-7"), lambda root: None,
                 r"pair set 'herding-7': 7 pairs requested, but the train split holds 6 images",
                 id="coreset-too-many"),
    pytest.param("evaluate_retrieval", ("--pairs", "random-7"), lambda root: None,
                 r"pair set 'random-7': 7 pairs requested, but the train split holds 6 images",
                 id="random-too-many"),
]


@pytest.mark.parametrize("stage, args, breakage, culprit", CASES)
def test_bad_image_text_input_fails_with_one_line_and_changes_nothing(stage, args, breakage, culprit, case_project,
                                                                      capsys, monkeypatch):
    from mmdistill.embed import features
    monkeypatch.setitem(features.TEXT_ENCODERS, "minilm", lambda params, device: HashEncoder())
    breakage(case_project)
    before = snapshot(case_project)
    code, stderr = run_in_process(stage, args, capsys)
    check_failure(case_project, code, stderr, culprit, before)

import pyarrow as pa
import pytest

from mmdistill.core.config import int_list, param
from mmdistill.core.runtime import resolve_device
from mmdistill.core.storage import (
    PipelineError,
    atomic_path,
    decode_image,
    read_parquet,
    read_parquet_metadata,
    write_parquet,
)


def test_parquet_round_trip_with_metadata(tmp_path):
    path = write_parquet({"uid": ["a", "b"], "x": [1, 2]}, tmp_path / "t.parquet", {"info": {"k": [1, 2]}})
    assert read_parquet(path).to_pydict() == {"uid": ["a", "b"], "x": [1, 2]}
    assert read_parquet_metadata(path)["info"] == {"k": [1, 2]}


def test_missing_column_names_file_and_column(tmp_path):
    path = write_parquet(pa.table({"uid": ["a"]}), tmp_path / "t.parquet")
    with pytest.raises(PipelineError, match=r"t\.parquet.*'label'"):
        read_parquet(path, ["uid", "label"])


def test_missing_artifact_says_which_stage(tmp_path):
    with pytest.raises(PipelineError, match="no Parquet data"):
        read_parquet(tmp_path / "nothing")


def test_failed_write_leaves_nothing(tmp_path):
    target = tmp_path / "out.bin"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []


def test_failed_overwrite_keeps_old_file(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("new")
            raise RuntimeError
    assert target.read_text() == "old" and len(list(tmp_path.iterdir())) == 1


def test_corrupt_image_names_the_file():
    with pytest.raises(PipelineError, match="img_007.png"):
        decode_image(b"not a png", "img_007.png")


def test_param_errors_name_the_param():
    params = {"a": {"b": "x", "n": 3, "flag": True}}
    with pytest.raises(PipelineError, match="'a.c'"):
        param(params, "a.c")
    with pytest.raises(PipelineError, match="'a.b' must be int"):
        param(params, "a.b", int)
    with pytest.raises(PipelineError, match="'a.flag' must be int"):
        param(params, "a.flag", int)
    with pytest.raises(PipelineError, match="not one of: y, z"):
        param(params, "a.b", str, choices=("y", "z"))
    assert param(params, "a.n", float) == 3
    with pytest.raises(PipelineError, match="'a.b' must be a non-empty list"):
        int_list({"a": {"b": [1, 0]}}, "a.b")


def test_device_cuda_without_gpu_is_a_clear_error():
    import torch
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(PipelineError, match="no CUDA device"):
        resolve_device({"device": "cuda"})
    assert resolve_device({"device": "auto"}).type == "cpu"

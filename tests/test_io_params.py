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


# issue 14 item 11: every artifact reader checks that numbers are finite; item 17: wrong dtypes name file and column
def test_nan_in_a_parquet_float_column_names_file_column_and_row(tmp_path):
    path = write_parquet({"uid": ["a", "b", "c"], "lof_score": [0.1, float("nan"), 0.3]}, tmp_path / "lof.parquet")
    with pytest.raises(PipelineError, match=r"lof\.parquet: column 'lof_score' holds NaN or inf \(row 1"):
        read_parquet(path)


def test_inf_in_a_parquet_list_column_names_the_row(tmp_path):
    table = pa.table({"uid": ["a", "b"], "center": pa.array([[0.0, 1.0], [float("inf"), 2.0]],
                                                              pa.list_(pa.float32()))})
    path = write_parquet(table, tmp_path / "kmeans-ipc1.parquet")
    with pytest.raises(PipelineError, match=r"kmeans-ipc1\.parquet: column 'center' holds NaN or inf \(row 1"):
        read_parquet(path, ["uid", "center"])


def test_wrong_column_dtype_names_file_and_column(tmp_path):
    path = write_parquet({"uid": ["a", "b"], "label": ["3", "x"]}, tmp_path / "train-00000.parquet")
    with pytest.raises(PipelineError, match=r"train-00000\.parquet: column 'label' has type string, expected an "
                                            r"integer"):
        read_parquet(path, ["uid", "label"])


def test_corrupt_parquet_file_is_named(tmp_path):
    path = tmp_path / "train-00000.parquet"
    path.write_bytes(b"PAR1 not really")
    with pytest.raises(PipelineError, match=r"train-00000\.parquet: not a readable Parquet file"):
        read_parquet(path)


def test_nan_in_a_tensor_file_names_file_and_key(tmp_path):
    import torch

    from mmdistill.core.storage import load_tensors, save_tensors
    images = torch.zeros(4, 1, 2, 2)
    images[2, 0, 1, 1] = float("nan")
    path = save_tensors({"images": images, "labels": torch.arange(4), "info": {"x": 1}}, tmp_path / "dm-ipc1.pt")
    with pytest.raises(PipelineError, match=r"dm-ipc1\.pt: 'images' holds NaN or inf \(row 2\)"):
        load_tensors(path)
    nested = save_tensors({"state_dict": {"w": torch.tensor([1.0, float("inf")])}}, tmp_path / "heads.pt")
    with pytest.raises(PipelineError, match=r"heads\.pt: 'state_dict\.w' holds NaN or inf"):
        load_tensors(nested)


def test_truncated_tensor_file_is_named(tmp_path):
    import torch

    from mmdistill.core.storage import load_tensors, save_tensors
    path = save_tensors({"images": torch.zeros(100, 3)}, tmp_path / "dm-ipc1.pt")
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(PipelineError, match=r"dm-ipc1\.pt: not a readable tensor file"):
        load_tensors(path)


def test_nan_feature_vector_names_shard_row_and_uid(tmp_path):
    import numpy as np

    from mmdistill.embed.features import load_features, write_features
    vectors = np.eye(3, 4, dtype=np.float32)
    vectors[1, 2] = np.nan
    write_features("caption", {"uid": ["a", "b", "c"], "label": [0, 1, 2], "instance_id": [-1, -1, -1]}, vectors,
                   "fake", {}, 2, root=tmp_path)
    with pytest.raises(PipelineError, match=r"caption/vectors-00000\.npy: row 1 \(uid b\) holds NaN or inf"):
        load_features("caption", root=tmp_path)
    vectors[1, 2], vectors[2, 0] = 0, np.inf
    write_features("caption", {"uid": ["a", "b", "c"], "label": [0, 1, 2], "instance_id": [-1, -1, -1]}, vectors,
                   "fake", {}, 2, root=tmp_path)
    with pytest.raises(PipelineError, match=r"caption/vectors-00001\.npy: row 0 \(uid c\) holds NaN or inf"):
        load_features("caption", root=tmp_path)


def test_empty_float_columns_read(tmp_path):
    table = pa.table({"uid": pa.array([], pa.string()), "center": pa.array([], pa.list_(pa.float32())),
                      "score": pa.array([], pa.float32())})
    assert read_parquet(write_parquet(table, tmp_path / "empty.parquet")).num_rows == 0

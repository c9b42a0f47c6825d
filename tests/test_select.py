import numpy as np
import pytest

from stages import select
from stages.io import PipelineError, read_parquet
from stages.select import kmeans_prototypes, lof_inliers
from tests.conftest import run_stage, set_params


def test_lof_removes_planted_outliers():
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(0, 0.1, (200, 8)), rng.normal(5, 0.1, (2, 8))])
    scores, inlier = lof_inliers(x, n_neighbors=10, contamination=0.01, seed=0)
    assert not inlier[200:].any() and inlier[:200].sum() >= 197
    assert scores[200:].max() < scores[:200].min()


def test_kmeans_recovers_planted_clusters():
    rng = np.random.default_rng(1)
    centres = np.array([[0, 0], [10, 0], [0, 10]], float)
    sizes = [50, 30, 20]
    x = np.concatenate([c + rng.normal(0, 0.3, (n, 2)) for c, n in zip(centres, sizes)])
    found, labels, nearest = kmeans_prototypes(x, 3, n_init=10, seed=0)
    assert np.allclose(found, centres, atol=0.3)  # sorted by size, as planted
    assert np.bincount(labels).tolist() == sizes
    assert all(labels[nearest[c]] == c for c in range(3))


def test_select_stage_outputs_and_determinism(annotated):
    run_stage(select)
    kmeans = read_parquet("data/selections/kmeans-ipc2.parquet")
    assert kmeans.num_rows == 20 and sorted(set(kmeans["label"].to_pylist())) == list(range(10))
    lof = read_parquet("data/selections/lof.parquet")
    assert lof.num_rows == 100
    first = (annotated / "data/selections/kmeans-ipc2.parquet").read_bytes()
    run_stage(select)
    assert (annotated / "data/selections/kmeans-ipc2.parquet").read_bytes() == first


def test_ipc_larger_than_class_names_class(annotated):
    set_params(annotated, **{"distill.ipcs": [1, 50]})
    with pytest.raises(PipelineError, match="IPC 50.*class 'T-shirt/top'"):
        run_stage(select)

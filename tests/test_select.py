import json

import numpy as np
import pytest

from mmdistill.core.storage import PipelineError, read_parquet, read_parquet_metadata
from mmdistill.embed.features import load_features
from mmdistill.selection import coresets as select
from mmdistill.selection.coresets import kmeans_prototypes, lof_inliers
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


@pytest.mark.slow
def test_select_stage_outputs_and_determinism(annotated):
    run_stage("selection")
    kmeans = read_parquet("data/selections/kmeans-ipc2.parquet")
    assert kmeans.num_rows == 20 and sorted(set(kmeans["label"].to_pylist())) == list(range(10))
    lof = read_parquet("data/selections/lof.parquet")
    assert lof.num_rows == 100
    outputs = [annotated / p for p in ("data/selections/kmeans-ipc2.parquet",
                                       "outputs/figures/selection/kmeans-ipc2.png",
                                       "outputs/figures/selection/images-ipc2.png")]
    first = [p.read_bytes() for p in outputs]
    assert all(b[:4] == b"\x89PNG" for b in first[1:])  # PCA scatter and grid of the chosen images
    run_stage("selection")
    assert [p.read_bytes() for p in outputs] == first

    run_stage("align")  # learned joint space of the offline features, then text and PDS prototypes
    metrics = json.loads((annotated / "outputs/metrics/align.json").read_text())
    record = json.loads((annotated / "data/aligned/record.json").read_text())
    assert record["val_pairs"] == 20 and "unaligned" not in metrics  # EfficientNet and MiniLM: two spaces
    assert set(metrics) == {"aligned", "final_train_loss"} and record["chance"]["R@1"] == 5.0
    assert set(metrics["aligned"]["image_to_text"]) == {"R@1", "R@5", "R@10"}
    for kind in ("image", "caption"):
        _, aligned = load_features(kind, annotated / "data/aligned")
        assert aligned.shape[1] == 256 and np.allclose(np.linalg.norm(aligned, axis=1), 1, atol=1e-2)
    run_stage("prototypes")
    text = read_parquet("data/prototypes/text-ipc2.parquet")
    assert text.num_rows == 20
    assert list(zip(text["label"].to_pylist(), text["cluster"].to_pylist())) == \
        list(zip(kmeans["label"].to_pylist(), kmeans["cluster"].to_pylist()))
    described = read_parquet("data/annotations/descriptions.parquet", ["uid", "description"])
    description_of = dict(zip(described["uid"].to_pylist(), described["description"].to_pylist()))
    assert all(description_of[u] == d for u, d in zip(text["uid"].to_pylist(), text["description"].to_pylist()))
    words = text["words"].to_pylist()
    assert all(len(w) <= 30 for w in words) and sum(len(w) > 0 for w in words) >= 10
    for method in ("random", "herding", "kcenter", "forgetting"):  # coresets over pairs, labels ignored
        pairs = read_parquet(f"data/prototypes/pairs-{method}-10.parquet")
        assert pairs["rank"].to_pylist() == list(range(10)) and len(set(pairs["uid"].to_pylist())) == 10
    assert read_parquet_metadata("data/prototypes/pairs-kcenter-10.parquet")["selection"]["start"] == "random"
    assert read_parquet_metadata("data/prototypes/pairs-forgetting-10.parquet")["selection"]["order"] == "fewest"
    pds = read_parquet("data/prototypes/pds-5.parquet")
    assert pds.num_rows == 5 and sorted(pds["image_cluster"].to_pylist()) == list(range(5))
    assert sum(pds["shared"].to_pylist()) <= 80  # 100 train pairs, 20% pruned
    assert all(len(v) == 256 for v in pds["image"].to_pylist())
    names = ("text-ipc2", "pds-5", "pairs-kcenter-10")
    first = [(annotated / f"data/prototypes/{name}.parquet").read_bytes() for name in names]
    run_stage("align")
    run_stage("prototypes")
    assert [(annotated / f"data/prototypes/{name}.parquet").read_bytes() for name in names] == first


def test_ipc_larger_than_class_names_class(annotated):
    set_params(annotated, **{"distill.ipcs": [1, 50]})
    with pytest.raises(PipelineError, match="IPC 50.*class 'T-shirt/top'"):
        run_stage("selection")


def test_empty_class_names_class(annotated, monkeypatch):
    from mmdistill.stages import selection
    info = selection.dataset_info()
    monkeypatch.setattr(selection, "dataset_info", lambda: {**info, "class_names": info["class_names"] + ["unicorn"]})
    with pytest.raises(PipelineError, match="class 'unicorn' has no train images"):
        run_stage("selection")


def test_herding_mean_error_shrinks_with_k():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(300, 16))
    errors = [np.linalg.norm(x[select.herding(x, k)].mean(0) - x.mean(0)) for k in (1, 5, 20, 60)]
    assert errors == sorted(errors, reverse=True) and errors[-1] < 0.5 * errors[0]
    assert len(set(select.herding(x, 60).tolist())) == 60


def test_k_center_radius_no_larger_than_random():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(400, 8))

    def radius(idx):
        return np.sqrt(((x[:, None] - x[idx][None]) ** 2).sum(-1).min(1).max())

    randoms = [radius(rng.choice(400, 20, replace=False)) for _ in range(20)]
    for start in ("mean", "random"):
        chosen = select.k_center(x, 20, start, np.random.default_rng(0))
        assert radius(chosen) <= min(randoms) and len(set(chosen.tolist())) == 20


def test_k_center_starts_from_a_random_point_or_the_mean():
    """MTT-VL 3.2: k-center starts by randomly selecting a point (the default); `mean` is the earlier start."""
    x = np.random.default_rng(6).normal(size=(50, 4))
    nearest_mean = int(np.argmin(((x - x.mean(0)) ** 2).sum(1)))
    assert select.k_center(x, 3, "mean")[0] == nearest_mean
    firsts = {int(select.k_center(x, 3, "random", np.random.default_rng(s))[0]) for s in range(10)}
    assert len(firsts) > 5 and firsts == {int(np.random.default_rng(s).integers(50)) for s in range(10)}
    assert np.array_equal(select.k_center(x, 5, "random", np.random.default_rng(1)),
                          select.k_center(x, 5, "random", np.random.default_rng(1)))
    with pytest.raises(PipelineError, match="select.kcenter_start"):
        select.k_center(x, 3, "median")


def test_kcenter_selection_start_is_a_param(annotated):
    """Stage select: k-center per class starts at a seeded random image by default, at the image nearest the
    class mean with `select.kcenter_start: mean`; the choice is in the selection's metadata."""
    uids, labels, vectors = select.train_features("image")
    firsts = {}
    for start in ("random", "mean"):
        set_params(annotated, **{"select.kcenter_start": start})
        run_stage("selection")
        path = "data/selections/kcenter-ipc2.parquet"
        assert read_parquet_metadata(path)["selection"]["start"] == start
        table = read_parquet(path)
        firsts[start] = [u for u, r in zip(table["uid"].to_pylist(), table["rank"].to_pylist()) if r == 0]
    outlier = dict(zip(*(read_parquet("data/selections/lof.parquet")[c].to_pylist() for c in ("uid", "outlier"))))
    nearest = []
    for c in range(10):
        members = [i for i in np.flatnonzero(labels == c) if not outlier[uids[i]]]
        x = vectors[members]
        nearest.append(str(uids[members[int(np.argmin(((x - x.mean(0)) ** 2).sum(1)))]]))
    assert firsts["mean"] == nearest
    assert sum(a != b for a, b in zip(firsts["random"], nearest)) >= 5  # ~1 in 9 would coincide by chance


def test_pds_matching_recovers_planted_permutation():
    rng = np.random.default_rng(4)
    clusters, dim = 6, 32
    img_centres = np.linalg.qr(rng.normal(size=(dim, dim)))[0][:clusters] * 3
    txt_centres = np.linalg.qr(rng.normal(size=(dim, dim)))[0][clusters:2 * clusters] * 3
    assign = rng.integers(0, clusters, 600)
    perm = rng.permutation(clusters)  # image cluster c pairs with text cluster perm[c]
    image = img_centres[assign] + rng.normal(0, 0.1, (600, dim))
    text = txt_centres[perm[assign]] + rng.normal(0, 0.1, (600, dim))
    out = select.pds_prototypes(image, text, clusters, prune_ratio=0.0, seed=0, batch_size=256)
    for (i, j), protos_img, protos_txt in zip(out["matches"], out["image"], out["text"]):
        c = int(np.argmin(((img_centres - protos_img) ** 2).sum(1)))
        assert int(np.argmin(((txt_centres - protos_txt) ** 2).sum(1))) == perm[c]
    assert out["shared"].sum() == 600
    again = select.pds_prototypes(image, text, clusters, prune_ratio=0.0, seed=0, batch_size=256)
    assert np.array_equal(again["image"], out["image"])


def test_pds_prunes_and_checks_shapes():
    rng = np.random.default_rng(5)
    x = rng.normal(size=(100, 8))
    y = x + rng.normal(0, 0.1, (100, 8))
    y[:10] = -x[:10]  # the ten worst-aligned pairs
    out = select.pds_prototypes(x, y, 4, prune_ratio=0.1, seed=0)
    assert len(out["kept"]) == 90 and not set(range(10)) & set(out["kept"].tolist())
    for m, (image_rows, text_rows) in enumerate(zip(out["image_members"], out["text_members"])):
        assert set(image_rows.tolist()) <= set(out["kept"].tolist())        # the rows each prototype averages
        assert out["shared"][m] == len(image_rows) == len(text_rows) > 0    # no pairless match here
        assert np.allclose(out["image"][m], x[image_rows].mean(0), atol=1e-5)
        assert np.allclose(out["text"][m], y[text_rows].mean(0), atol=1e-5)
    with pytest.raises(PipelineError, match="one space"):
        select.pds_prototypes(x, y[:, :4], 4)
    with pytest.raises(PipelineError, match="row-aligned"):
        select.pds_prototypes(x, y[:50], 4)


def test_coreset_selections_written(annotated):
    run_stage("selection")
    for method in ("herding", "kcenter"):
        table = read_parquet(f"data/selections/{method}-ipc2.parquet")
        assert table.num_rows == 20 and table["rank"].to_pylist()[:2] == [0, 1]


def test_text_prototypes_pick_each_clusters_own_words():
    common = "a shirt photographed in the studio"  # in every description: non-representative
    texts = [f"{common}, red striped cotton", f"{common}, red striped", f"{common}, red collar",
             f"{common}, blue dotted", f"{common}, blue wool", f"{common}, blue pocket dotted wool"]
    assign = np.array([0, 0, 0, 1, 1, 1])
    out = select.text_prototypes(texts, assign, np.zeros(6), 2, threshold=0.7, top_k=3)
    (i0, words0, _), (i1, words1, _) = out
    assert words0 == ["red", "striped", "collar"] and words1 == ["blue", "dotted", "wool"]
    assert i0 == 0 and i1 == 5  # the descriptions using most of their cluster's top words
    assert not {"shirt", "studio", "photographed"} & set(words0 + words1)
    out = select.text_prototypes(texts, assign, np.zeros(6), 2, threshold=1.0, top_k=1)
    assert out[0][1] == ["photographed"]  # with no threshold the class-wide words win


def test_text_prototype_ties_go_to_the_image_nearest_the_centre():
    texts = ["grey boot", "grey boot", "grey boot"]
    out = select.text_prototypes(texts, np.zeros(3, int), np.array([0.5, 0.1, 0.3]), 1, threshold=1.0, top_k=30)
    assert out[0][0] == 1


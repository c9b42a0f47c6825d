"""caption_match, caption_concat, stage caption_head and stage annotate_test on the tiny project."""
from __future__ import annotations

import json
import os

import pyarrow.parquet as pq
import pytest
import torch

from mmdistill.core.storage import PipelineError, load_tensors, save_tensors
from mmdistill.data.datasets import load_split
from tests.conftest import run_stage, set_params

torch.set_num_threads(1)
os.environ.setdefault("HF_HUB_OFFLINE", "1")

FAST_GM = {"iterations": 2, "batch_real": 4, "outer_loop": 2, "inner_loop": 1}


def fast(root, method: str, **extra) -> None:
    set_params(root, **{f"distill.{method}.{k}": v for k, v in {**FAST_GM, **extra}.items()},
               **{"caption_head.epochs": 2, "caption_head.width": 8})


def test_caption_head_shape_and_training():
    from mmdistill.nn.caption_head import CaptionHead, train_head
    gen = torch.Generator().manual_seed(0)
    images = torch.randn(40, 1, 28, 28, generator=gen)
    captions = torch.nn.functional.normalize(torch.randn(40, 12, generator=gen), dim=1)
    head, history = train_head(CaptionHead(1, 28, 12, 8), images, captions, epochs=15, batch_size=20, lr=0.01, seed=0)
    out = head(images)
    assert out.shape == (40, 12)
    assert torch.allclose(out.norm(dim=1), torch.ones(40), atol=1e-5)
    assert history[-1] < 0.7 * history[0]


def test_caption_losses_decrease():
    """caption_gap alone, and lambda_1 gradient matching + lambda_2 caption_gap, fall under SGD on the pixels."""
    from mmdistill.distill.losses import caption_gap, gradient_match, weighted_sum
    from mmdistill.nn.caption_head import CaptionHead
    from mmdistill.nn.nets import make_net
    torch.manual_seed(0)
    classes = 3
    head = CaptionHead(1, 28, 16, 8).eval().requires_grad_(False)
    targets = torch.nn.functional.normalize(torch.randn(classes, 16), dim=1)
    net = make_net("convnet3", 1, classes, 28)
    real = torch.randn(classes * 4, 1, 28, 28)
    for terms in (lambda s: [(1.0, lambda: caption_gap(head(s), targets, classes))],
                  lambda s: [(1.0, lambda: gradient_match(net, real, s, classes)),
                             (0.5, lambda: caption_gap(head(s), targets, classes))]):
        syn = torch.randn(classes * 2, 1, 28, 28).requires_grad_(True)
        opt = torch.optim.SGD([syn], lr=0.5, momentum=0.5)
        losses = []
        for _ in range(8):
            loss = weighted_sum(terms(syn), "cpu")
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
        assert losses[-1] < losses[0]


def test_caption_gap_shape_mismatch_is_clear():
    from mmdistill.distill.losses import caption_gap
    with pytest.raises(PipelineError, match="caption features"):
        caption_gap(torch.zeros(6, 16), torch.zeros(3, 12), 3)


def test_unknown_head_and_missing_blip2_weights_are_errors(annotated):
    set_params(annotated, **{"caption_head.head": "nope"})
    with pytest.raises(PipelineError, match="'caption_head.head' = 'nope' is not one of: offline, blip2"):
        run_stage("caption_head")
    set_params(annotated, **{"caption_head.head": "blip2", "caption_head.blip2.model": str(annotated / "missing")})
    with pytest.raises(PipelineError, match="caption_head.blip2.model"):
        run_stage("caption_head")


def test_blip2_head_tiny_model(annotated, tmp_path):
    """A tiny random-weight BLIP-2 saved to disk: the head trains its map, is differentiable w.r.t. the
    pixels, and caption_match runs through it."""
    from mmdistill.nn import caption_head
    from tests.test_annotate_real import build_blip2
    model = build_blip2(tmp_path)
    fast(annotated, "caption_match", iterations=1)
    set_params(annotated, **{"caption_head.head": "blip2", "caption_head.blip2.model": str(model),
                             "caption_head.epochs": 3})
    run_stage("caption_head")
    head, saved = caption_head.load_head(torch.device("cpu"), 384)
    assert saved["head"] == "blip2" and saved["dim"] == 384
    images = load_split("train").normalized()[:4].requires_grad_(True)
    out = head(images)
    assert out.shape == (4, 384) and torch.allclose(out.norm(dim=1), torch.ones(4), atol=1e-5)
    out.sum().backward()
    assert images.grad.abs().sum() > 0
    run_stage("distill", "--method", "caption_match", "--ipc", "1")
    assert len(load_tensors(annotated / "data/distilled/caption_match-ipc1.pt")["loss"]) == 1


def test_caption_match_end_to_end(annotated):
    fast(annotated, "caption_match")
    run_stage("caption_head")
    metrics = json.loads((annotated / "outputs/metrics/caption_head.json").read_text())
    record = json.loads((annotated / "data/caption_head/record.json").read_text())
    assert -1 <= metrics["val"]["cosine_mean"] <= 1 and record["val_pairs"] > 0
    assert set(metrics) == {"val", "final_train_loss"} and set(metrics["val"]) == {"cosine_mean", "image_to_caption"}
    run_stage("distill", "--method", "caption_match", "--ipc", "1")
    out = load_tensors(annotated / "data/distilled/caption_match-ipc1.pt")
    assert out["images"].shape == (10, 1, 28, 28) and len(out["loss"]) == 2
    assert out["info"]["settings"]["caption_weight"] == 1.0
    # a head for other caption features is refused with a clear error
    saved = load_tensors(annotated / "data/caption_head/head.pt")
    saved["dim"] = 7
    save_tensors(saved, annotated / "data/caption_head/head.pt")
    with pytest.raises(PipelineError, match="7-d caption features"):
        run_stage("distill", "--method", "caption_match", "--ipc", "1")


def test_test_split_captions_are_label_free(annotated):
    from mmdistill.annotate.cache import load_annotation_input
    from mmdistill.stages import annotate_heldout as annotate_test
    table = load_annotation_input(("uid", "label", "class_name"), annotate_test.TEST)
    assert set(table["label"].to_pylist()) == {-1} and set(table["class_name"].to_pylist()) == {""}
    run_stage("annotate_heldout")
    captions = pq.read_table(annotated / "data/annotations_test/captions.parquet").to_pylist()
    test = load_split("test")
    assert captions and {c["uid"] for c in captions} <= set(test.uids)
    class_names = test.class_names
    for row in captions:
        for name in class_names:
            assert name.lower() not in row["caption"].lower(), (row, name)
    index = pq.read_table(annotated / "data/features_test/caption/index.parquet")
    assert index.num_rows == len(captions) and set(index["label"].to_pylist()) == {-1}


def test_caption_concat_end_to_end(annotated):
    fast(annotated, "caption_concat")
    run_stage("annotate_heldout")
    run_stage("distill", "--method", "caption_concat", "--ipc", "1")
    out = load_tensors(annotated / "data/distilled/caption_concat-ipc1.pt")
    assert out["captions"].shape == (10, 384) and out["images"].shape == (10, 1, 28, 28)
    run_stage("evaluate", "--method", "caption_concat", "--ipc", "1")
    metrics = json.loads((annotated / "outputs/metrics/caption_concat-ipc1.json").read_text())["convnet3"]
    record = json.loads((annotated / "outputs/evaluate/caption_concat-ipc1.json").read_text())
    assert 0 <= metrics["test_accuracy_mean"] <= 100 and len(record["accuracies"]["convnet3"]["test_accuracies"]) == 2
    assert 0 <= record["test_images_without_caption"] <= len(load_split("test"))
    # synthetic captions of another dimension: a clear error naming the shapes
    out["captions"] = out["captions"][:, :10]
    save_tensors(out, annotated / "data/distilled/caption_concat-ipc1.pt")
    with pytest.raises(PipelineError, match="caption embeddings have shape"):
        run_stage("evaluate", "--method", "caption_concat", "--ipc", "1")


def test_caption_concat_refuses_a_template_naming_the_class(annotated):
    fast(annotated, "caption_concat")
    set_params(annotated, **{"caption.instance_template": "a {phrase} of a {class_name}"})
    run_stage("caption")
    with pytest.raises(PipelineError, match="names the class"):
        run_stage("distill", "--method", "caption_concat", "--ipc", "1")


@pytest.mark.slow  # stage select (LOF, k-means, herding, k-center, figures) costs ~40 s on 2 loaded cores
def test_caption_concat_cluster_captions(annotated):
    """captions: cluster -> images start from kmeans's cluster images, each caption the unit mean of its cluster."""
    fast(annotated, "caption_concat", captions="cluster")
    run_stage("selection")
    run_stage("distill", "--method", "caption_concat", "--ipc", "2")
    out = load_tensors(annotated / "data/distilled/caption_concat-ipc2.pt")
    kmeans = pq.read_table(annotated / "data/selections/kmeans-ipc2.parquet").to_pylist()
    assert out["source_uids"] == [r["uid"] for r in sorted(kmeans, key=lambda r: (r["label"], r["cluster"]))]
    assert out["captions"].shape == (20, 384)
    assert torch.allclose(out["captions"].norm(dim=1), torch.ones(20), atol=1e-5)

"""Image-text track: recall rule (multi-caption, ties never hit), the random-ranking bound, the pair model and its
image-encoder registry (timm NFNet and peft-LoRA ViT from tiny saved checkpoints), expert trajectories with a
byte-identical resume, and the embed_pairs -> buffer -> evaluate_retrieval stages on a tiny Karpathy layout."""
import copy
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from mmdistill.core.config import validate
from mmdistill.core.schema import schema
from mmdistill.core.storage import PipelineError, load_tensors
from mmdistill.data.pairs import parse_pair_set, subset
from mmdistill.distill.experts import shard_path, train_experts
from mmdistill.evaluate.retrieval import chance_recall, evaluate_pair_set, ranks, recall
from mmdistill.nn.contrastive import build_pair_model, info_nce, trainable_state
from tests.conftest import REPO, run_stage, set_params

torch.set_num_threads(1)


def params(**updates) -> dict:
    p = yaml.safe_load((REPO / "params.yaml").read_text())
    p["device"] = "cpu"
    block = p["imagetext"]
    block["model"]["dim"] = 8
    block["buffer"].update(experts=2, expert_epochs=3, batch_size=4)
    block["evaluate"].update(repeats=2, epochs=2, batch_size=4)
    for key, value in updates.items():
        node, *parts = p, *key.split(".")
        for part in parts[:-1]:
            node = node[part]
        node[parts[-1]] = value
    validate(p, schema())
    return p


def tiny_pairs(n=8, captions=2, size=16, channels=1, dim=6, seed=0) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {"images": torch.randn(n, channels, size, size, generator=g),
            "texts": torch.randn(n * captions, dim, generator=g),
            "image_of_text": torch.arange(n).repeat_interleave(captions), "uids": [f"u{i}" for i in range(n)],
            "channels": channels, "image_size": size, "mean": [0.5] * channels, "std": [0.25] * channels}


# ---- recall rule ---------------------------------------------------------------------------------------------

def test_multi_caption_hit_and_own_image():
    # 3 images, captions 0,1 -> image 0; 2 -> image 1; 3,4 -> image 2
    image_of_text = torch.tensor([0, 0, 1, 2, 2])
    scores = torch.tensor([[0.1, 0.8, 0.9, 0.0, 0.0],    # image 0: best own caption (1) is 2nd after caption 2
                           [0.0, 0.0, 0.7, 0.9, 0.0],    # image 1: own caption 2nd
                           [0.0, 0.0, 0.0, 0.1, 0.5]])   # image 2: own caption 4 is 1st
    tr, ir = ranks(scores, image_of_text)
    assert tr.tolist() == [2, 2, 1]
    # captions: 0 -> image 0 scores 0.1, best other 0.0 -> 1; 1 -> 1; 2 -> image 1 0.7 < image 0 0.9 -> 2;
    # 3 -> image 2 scores 0.1 < image 1 0.9 -> 2; 4 -> 1
    assert ir.tolist() == [1, 1, 2, 2, 1]
    r = recall(scores, image_of_text, ks=(1, 5))
    assert r["tr_r1"] == pytest.approx(100 / 3) and r["tr_r5"] == 100.0
    assert r["ir_r1"] == pytest.approx(60.0) and r["ir_r5"] == 100.0


def test_ties_with_a_wrong_candidate_never_count_as_hits():
    image_of_text = torch.tensor([0, 1])
    tied = torch.tensor([[0.5, 0.5], [0.2, 0.9]])  # image 0: own caption 0 tied with wrong caption 1 at the top
    tr, ir = ranks(tied, image_of_text)
    assert tr.tolist() == [2, 1]                    # the tie makes a miss at K=1
    assert ir.tolist() == [1, 1]                    # caption 1: image 1 (0.9) beats image 0 (0.5)
    constant = torch.zeros(4, 4)                    # no information: every query misses at K=1..3
    r = recall(constant, torch.arange(4), ks=(1, 3, 4))
    assert r["tr_r1"] == r["tr_r3"] == r["ir_r1"] == r["ir_r3"] == 0.0
    assert r["tr_r4"] == r["ir_r4"] == 100.0       # all 4 candidates shown: a hit
    # another OWN caption tied with the best one does not push it down; a wrong one tied with it does
    own_tie = torch.tensor([[0.5, 0.5, 0.1], [0.0, 0.0, 1.0]])
    assert ranks(own_tie, torch.tensor([0, 0, 1]))[0].tolist() == [1, 1]
    wrong_tie = torch.tensor([[0.5, 0.1, 0.5], [0.0, 0.0, 1.0]])
    assert ranks(wrong_tie, torch.tensor([0, 0, 1]))[0].tolist() == [2, 1]


def test_perfect_scores_and_bad_input():
    image_of_text = torch.tensor([0, 0, 1, 1, 2])
    perfect = torch.nn.functional.one_hot(image_of_text, 3).T.float()
    assert set(recall(perfect, image_of_text).values()) == {100.0}
    with pytest.raises(PipelineError, match="NaN"):
        recall(torch.full((3, 5), float("nan")), image_of_text)
    with pytest.raises(PipelineError, match="image 2 has no caption"):
        recall(torch.zeros(3, 2), torch.tensor([0, 1]))


def test_identical_caption_strings_are_one_text_class_matching():
    """Label captions: images 0, 1 are sneakers (both "sneaker"), image 2 a bag. A model that only knows the class
    scores 100 % (MTT-VL Table 7's class matching); without text ids every shared caption is a tied wrong candidate."""
    image_of_text, text_id = torch.tensor([0, 1, 2]), torch.tensor([0, 0, 1])
    scores = torch.tensor([[0.9, 0.9, 0.1], [0.8, 0.8, 0.2], [0.1, 0.1, 0.7]])   # columns: captions
    assert recall(scores, image_of_text, ks=(1,), text_id=text_id) == {"tr_r1": 100.0, "ir_r1": 100.0}
    assert recall(scores, image_of_text, ks=(1,)) == {"tr_r1": pytest.approx(100 / 3), "ir_r1": pytest.approx(200 / 3)}
    tr, ir = ranks(torch.tensor([[0.1, 0.1, 0.9], [0.8, 0.8, 0.2], [0.1, 0.1, 0.7]]), image_of_text, text_id)
    assert tr.tolist() == [2, 1, 1]                 # image 0 prefers the bag caption: its own text is 2nd of 2
    assert ir.tolist() == [1, 1, 2]                 # "sneaker": image 1 (a sneaker) is first; "bag": image 0 beats 2
    # random ranking: TR 1 of 2 distinct texts; IR "sneaker" is had by 2 of 3 images, "bag" by 1
    c = chance_recall(image_of_text, 3, ks=(1,), text_id=text_id)
    assert c == {"tr_r1": pytest.approx(50.0), "ir_r1": pytest.approx(100 * (2 / 3 + 2 / 3 + 1 / 3) / 3)}
    with pytest.raises(PipelineError, match="2 text ids for 3 captions"):
        recall(scores, image_of_text, text_id=torch.tensor([0, 1]))


def test_chance_recall_exact_and_matches_random_scores():
    c = chance_recall(torch.tensor([0, 0, 1, 1]), 2, ks=(1,))
    assert c == {"tr_r1": pytest.approx(50.0), "ir_r1": pytest.approx(50.0)}   # 1 - C(2,1)/C(4,1); 1/2
    image_of_text = torch.arange(12).repeat_interleave(3)
    expected = chance_recall(image_of_text, 12)
    g = torch.Generator().manual_seed(0)
    runs = [recall(torch.rand(12, 36, generator=g), image_of_text) for _ in range(300)]
    for key, value in expected.items():
        assert np.mean([r[key] for r in runs]) == pytest.approx(value, abs=3.0)


# ---- pair model ----------------------------------------------------------------------------------------------

def test_info_nce_is_symmetric_and_prefers_matching_pairs():
    a = torch.nn.functional.normalize(torch.randn(6, 4), dim=1)
    b = torch.nn.functional.normalize(torch.randn(6, 4), dim=1)
    assert info_nce(a, b, 0.1) == pytest.approx(float(info_nce(b, a, 0.1)), rel=1e-5)
    assert info_nce(a, a, 0.05) < info_nce(a, b, 0.05)


def test_convnet3_pair_model_trains_and_exposes_its_trainable_state():
    pairs = tiny_pairs(size=8, captions=1)
    model = build_pair_model(params(), 1, 8, [0.5], [0.25], 6, seed=0)
    state = trainable_state(model)
    assert any(k.startswith("param.image_encoder.") for k in state)
    assert {"param.image_proj.weight", "param.text_proj.weight"} <= set(state)
    assert not any("classifier" in k for k in state)
    same = build_pair_model(params(), 1, 8, [0.5], [0.25], 6, seed=0)
    assert all(torch.equal(v, trainable_state(same)[k]) for k, v in state.items())   # seeded init
    first = model(pairs["images"], pairs["texts"]).item()
    from mmdistill.nn.contrastive import train_pairs
    train_pairs(model, pairs["images"], pairs["texts"], pairs["image_of_text"], 8, torch.device("cpu"), lr=0.05,
                momentum=0.9, batch_size=8, generator=torch.Generator().manual_seed(0))
    assert model(pairs["images"], pairs["texts"]).item() < first


def test_unknown_image_encoder_is_named():
    p = params()
    p["imagetext"]["model"]["image_encoder"] = "resnet9000"
    with pytest.raises(PipelineError, match="imagetext.model.image_encoder"):
        validate(p, schema())
    with pytest.raises(PipelineError, match="resnet9000"):
        build_pair_model(p, 1, 16, [0.5], [0.25], 6, seed=0)


def test_efficientnet_encoder_sees_what_the_pretrained_model_sees():
    """Dataset-normalised images are mapped back to the pip model's own input normalisation."""
    from mmdistill.nn.pretrained import EfficientNetLite0
    p = params(**{"imagetext.model.image_encoder": "efficientnet_lite0", "imagetext.model.input_size": 32})
    model = build_pair_model(p, 1, 16, [0.3], [0.2], 6, seed=0).eval()
    uint8 = torch.randint(0, 256, (2, 1, 16, 16), dtype=torch.uint8)
    ours = model.image_encoder((uint8.float() / 255 - 0.3) / 0.2)
    reference = EfficientNetLite0(torch.device("cpu"), input_size=32).features(uint8)
    assert torch.allclose(torch.nn.functional.normalize(ours, dim=1), reference, atol=1e-4)
    assert ours.shape == (2, 1280) and not any(".classifier" in k or "_fc" in k for k in trainable_state(model))


def save_tiny_timm(folder: Path, arch: str, **kwargs):
    timm = pytest.importorskip("timm")
    from timm.models import save_for_hf
    net = timm.create_model(arch, pretrained=False, num_classes=0, **kwargs).eval()
    save_for_hf(net, folder, model_args=kwargs)
    return net


def test_nfnet_from_a_local_timm_folder(tmp_path):
    saved = save_tiny_timm(tmp_path / "nfnet", "nfnet_l0", channels=[32, 32, 64, 64], depths=[1, 1, 1, 1],
                           stem_chs=16, group_size=8, num_features=64)
    p = params(**{"imagetext.model.image_encoder": "nfnet_l0",
                  "imagetext.model.timm.nfnet_l0": str(tmp_path / "nfnet")})
    model = build_pair_model(p, 1, 16, [0.5], [0.25], 6, seed=0).eval()
    loaded = model.image_encoder.backbone
    assert all(torch.equal(a, b) for a, b in zip(saved.state_dict().values(), loaded.state_dict().values()))
    assert model.image_proj.in_features == 64
    assert any(k.startswith("param.image_encoder.backbone.stem") for k in trainable_state(model))
    p["imagetext"]["model"]["timm"]["nfnet_l0"] = str(tmp_path / "missing")
    with pytest.raises(PipelineError, match="no such folder"):
        build_pair_model(p, 1, 16, [0.5], [0.25], 6, seed=0)


def test_vit_with_lora_trains_only_the_adapters_and_projections(tmp_path):
    pytest.importorskip("peft")
    save_tiny_timm(tmp_path / "vit", "vit_tiny_patch16_224", img_size=32, patch_size=8, embed_dim=32, depth=1,
                   num_heads=2)
    p = params(**{"imagetext.model.image_encoder": "vit", "imagetext.model.timm.vit": str(tmp_path / "vit"),
                  "imagetext.model.input_size": 32, "imagetext.model.lora.rank": 2})
    model = build_pair_model(p, 1, 16, [0.5], [0.25], 6, seed=0)
    encoder_keys = [k for k in trainable_state(model) if k.startswith("param.image_encoder.")]
    assert encoder_keys and all("lora_" in k for k in encoder_keys)
    before = {k: v for k, v in trainable_state(model).items()}
    pairs = tiny_pairs(n=4)
    from mmdistill.nn.contrastive import train_pairs
    train_pairs(model, pairs["images"], pairs["texts"], pairs["image_of_text"], 1, torch.device("cpu"), lr=0.1,
                momentum=0.0, batch_size=4, generator=torch.Generator().manual_seed(0))
    base = dict(model.image_encoder.backbone.named_parameters())
    frozen = [n for n, q in base.items() if not q.requires_grad]
    assert frozen                                                     # the ViT itself stays frozen
    assert any(not torch.equal(before[k], v) for k, v in trainable_state(model).items() if "lora_B" in k)
    p["imagetext"]["model"]["lora"]["targets"] = ["no_such_module"]
    with pytest.raises(PipelineError, match="lora.targets"):
        build_pair_model(p, 1, 16, [0.5], [0.25], 6, seed=0)


# ---- expert trajectories -------------------------------------------------------------------------------------

def digests(root: Path) -> dict:
    return {str(f.relative_to(root)): hashlib.sha256(f.read_bytes()).hexdigest()
            for f in sorted(root.rglob("*.pt"))}


def test_buffer_saves_every_epoch_and_resumes_to_the_same_bytes(tmp_path):
    p, pairs, cpu = params(), tiny_pairs(), torch.device("cpu")
    record = train_experts(p, pairs, cpu, resume=False, root=tmp_path / "a", checkpoints=tmp_path / "ca")
    assert record["shards"] == 8 and len(digests(tmp_path / "a")) == 8      # 2 experts x (initial + 3 epochs)
    first, last = load_tensors(shard_path(tmp_path / "a", 0, 0)), load_tensors(shard_path(tmp_path / "a", 0, 3))
    assert set(first) == set(last) and any(not torch.equal(first[k], last[k]) for k in first)

    class Killed(Exception):
        pass

    def kill(expert, epoch):
        if (expert, epoch) == (1, 1):
            raise Killed
    with pytest.raises(Killed):
        train_experts(p, pairs, cpu, resume=False, root=tmp_path / "b", checkpoints=tmp_path / "cb", on_epoch=kill)
    assert not shard_path(tmp_path / "b", 1, 2).exists()
    resumed = train_experts(p, pairs, cpu, resume=True, root=tmp_path / "b", checkpoints=tmp_path / "cb")
    assert digests(tmp_path / "b") == digests(tmp_path / "a")
    assert (tmp_path / "b/record.json").read_bytes() == (tmp_path / "a/record.json").read_bytes()  # no timings in it
    assert record["seconds_per_expert_epoch"] > 0 and resumed["seconds_per_expert_epoch"] > 0
    other = copy.deepcopy(p)
    other["imagetext"]["buffer"]["lr"] = 0.5
    with pytest.raises(PipelineError, match="other settings"):
        train_experts(other, pairs, cpu, resume=True, root=tmp_path / "b", checkpoints=tmp_path / "cb")


# ---- pair sets and evaluation --------------------------------------------------------------------------------

def test_pair_set_names_and_subsets():
    assert parse_pair_set("full", 10) == ("full", None) and parse_pair_set("random-4", 10) == ("random", 4)
    assert parse_pair_set("mttvl-10", 10) == ("mttvl", 10)
    assert parse_pair_set("pds-3", 10) == ("pds", 3) and parse_pair_set("forgetting-2", 10) == ("forgetting", 2)
    for bad in ("random-0", "random", "kmeans-3", "../x", "mttvl-1/../x", "herding-01"):
        with pytest.raises(PipelineError, match="expected 'full', 'random-N'"):
            parse_pair_set(bad, 10)
    with pytest.raises(PipelineError, match="11 pairs requested.*10 images"):
        parse_pair_set("random-11", 10)
    from mmdistill.data.pairs import check_set_lists
    check_set_lists({"imagetext": {"pair_sets": ["full", "random-3"], "distill_sets": ["mttvl-3"],
                                   "coreset_sets": ["kcenter-3"], "synthesis_sets": ["pds_unclip-2"],
                                   "unclip": ["on"]}})
    assert parse_pair_set("pds_unclip-2", 10) == ("pds_unclip", 2)
    with pytest.raises(PipelineError, match="'imagetext.pair_sets' lists 'mttvl-3'.*distill_sets"):
        check_set_lists({"imagetext": {"pair_sets": ["mttvl-3"], "distill_sets": [], "coreset_sets": [],
                                       "synthesis_sets": [], "unclip": []}})
    with pytest.raises(PipelineError, match="'imagetext.distill_sets' lists 'full'"):
        check_set_lists({"imagetext": {"pair_sets": [], "distill_sets": ["full"], "coreset_sets": [],
                                       "synthesis_sets": [], "unclip": []}})
    with pytest.raises(PipelineError, match="'imagetext.coreset_sets' lists 'random-2'.*pair_sets takes random"):
        check_set_lists({"imagetext": {"pair_sets": [], "distill_sets": [], "coreset_sets": ["random-2"],
                                       "synthesis_sets": [], "unclip": []}})
    pairs = tiny_pairs(n=6, captions=3)
    sub = subset(pairs, 2, seed=0)
    assert len(sub["images"]) == 2 and sub["image_of_text"].tolist() == [0, 0, 0, 1, 1, 1]
    kept = [int(u[1:]) for u in sub["uids"]]
    assert torch.equal(sub["texts"], pairs["texts"][[3 * k + j for k in kept for j in range(3)]])
    assert subset(pairs, 2, seed=0)["uids"] == sub["uids"]


def test_evaluate_pair_set_reports_mean_and_std_on_each_split():
    p = params()
    train, val = tiny_pairs(seed=0), tiny_pairs(n=5, seed=1)
    summary, per_repeat = evaluate_pair_set(
        lambda s: build_pair_model(p, 1, 16, [0.5], [0.25], 6, s), train, {"val": val, "test": val}, repeats=2,
        seed=0, epochs=1, lr=0.01, momentum=0.9, batch_size=4, device=torch.device("cpu"))
    assert len(per_repeat) == 2 and set(summary) == {"val", "test"}
    assert set(summary["test"]) == {f"{w}_r{k}_{s}" for w in ("tr", "ir") for k in (1, 5, 10) for s in ("mean", "std")}
    assert summary["test"]["tr_r10_mean"] == 100.0                         # 5 images x 2 captions: K=10 sees all


# ---- stages on a tiny Karpathy layout ------------------------------------------------------------------------

class HashEncoder:
    """A stand-in text encoder (MiniLM itself is slow to load): a fixed random vector per distinct text."""

    def encode(self, texts, batch_size):
        out = []
        for t in texts:
            rng = np.random.default_rng(int(hashlib.sha256(t.encode()).hexdigest()[:8], 16))
            v = rng.standard_normal(12).astype(np.float32)
            out.append(v / np.linalg.norm(v))
        return np.stack(out)


def test_stages_embed_pairs_buffer_evaluate_retrieval(project, tmp_path, monkeypatch):
    from mmdistill.embed import features
    from tests.test_prepare_text import flickr_layout, karpathy_params
    monkeypatch.setitem(features.TEXT_ENCODERS, "minilm", lambda params, device: HashEncoder())
    set_params(project, **karpathy_params(flickr_layout(tmp_path / "flickr")), **{
        "imagetext.stages": ["on"], "imagetext.pair_sets": ["full", "random-3"], "imagetext.model.dim": 8,
        "imagetext.buffer.experts": 1, "imagetext.buffer.expert_epochs": 2, "imagetext.buffer.batch_size": 4,
        "imagetext.evaluate.repeats": 2, "imagetext.evaluate.epochs": 1, "imagetext.evaluate.batch_size": 4})
    run_stage("prepare")
    run_stage("embed_pairs")
    text = load_tensors("data/pair_text/test.pt")
    assert text["embeddings"].shape == (15, 12) and text["image_of_text"].tolist() == sorted([0, 1, 2] * 5)
    assert text["text_id"].tolist() == list(range(15))                     # every Flickr caption is distinct
    run_stage("buffer")
    assert sorted(p.name for p in Path("data/buffer/expert-000").iterdir()) == [
        "epoch-000.pt", "epoch-001.pt", "epoch-002.pt"]
    before = digests(Path("data/buffer"))
    run_stage("buffer", "--resume")                                         # finished: nothing changes
    assert digests(Path("data/buffer")) == before
    run_stage("evaluate_retrieval", "--pairs", "random-3")
    metrics = json.loads(Path("outputs/metrics/retrieval-random-3.json").read_text())
    assert set(metrics) == {"convnet3"} and "test_ir_r1_mean" in metrics["convnet3"]
    record = json.loads(Path("outputs/evaluate/retrieval-random-3.json").read_text())
    assert record["train_images"] == 3 and record["train_texts"] == 15 and len(record["recalls"]) == 2
    assert record["chance"]["test"]["ir_r1"] == pytest.approx(100 / 3)
    with pytest.raises(PipelineError, match="7 pairs requested"):
        run_stage("evaluate_retrieval", "--pairs", "random-7")

    # mttvl: distil 3 pairs against the buffer, kill after iteration 2, resume: the same bytes
    from mmdistill.core.config import load_params
    from mmdistill.stages.distill_pairs import distill_pairs
    set_params(project, **{"imagetext.distill_sets": ["mttvl-3"], "imagetext.mttvl.iterations": 3,
                           "imagetext.mttvl.expert_epochs": 1, "imagetext.mttvl.max_start_epoch": 1,
                           "imagetext.mttvl.syn_steps": 2, "imagetext.mttvl.checkpoint_every": 1,
                           "imagetext.mttvl.lr_images": 0.1, "imagetext.mttvl.lr_texts": 0.1})
    run_stage("distill_pairs", "--pairs", "mttvl-3")
    whole = Path("data/distilled_pairs/mttvl-3.pt").read_bytes()
    saved = load_tensors("data/distilled_pairs/mttvl-3.pt")
    assert saved["images"].shape == (3, 3, 16, 16) and saved["texts"].shape == (3, 12) and len(saved["loss"]) == 3
    assert len(Path("outputs/plots/loss/mttvl-3.tsv").read_text().splitlines()) == 4

    class Killed(Exception):
        pass

    def kill(done):
        if done == 2:
            raise Killed
    Path("data/distilled_pairs/mttvl-3.pt").unlink()
    with pytest.raises(Killed):
        distill_pairs("mttvl-3", load_params(), resume=False, on_iteration=kill)
    run_stage("distill_pairs", "--pairs", "mttvl-3", "--resume")
    assert Path("data/distilled_pairs/mttvl-3.pt").read_bytes() == whole
    assert len(Path("outputs/plots/loss/mttvl-3.tsv").read_text().splitlines()) == 4
    run_stage("evaluate_retrieval", "--pairs", "mttvl-3")
    record = json.loads(Path("outputs/evaluate/retrieval-mttvl-3.json").read_text())
    assert record["train_images"] == 3 and record["student_lr"] == pytest.approx(float(saved["lr"]))
    set_params(project, **{"imagetext.mttvl.expert_epochs": 2})
    with pytest.raises(PipelineError, match="exceed the buffer's 2 expert epochs"):
        run_stage("distill_pairs", "--pairs", "mttvl-3")


# ---- bi-trajectory matching (MTT-VL Eq. 4) -------------------------------------------------------------------

def test_trajectory_loss_is_normalised_per_side():
    from mmdistill.distill.trajectory_matching import trajectory_loss
    start = {"param.image_proj.weight": torch.zeros(2, 2), "param.text_proj.weight": torch.zeros(3),
             "buffer.image_encoder.bn.running_mean": torch.zeros(2)}
    target = {"param.image_proj.weight": torch.ones(2, 2), "param.text_proj.weight": torch.full((3,), 2.0),
              "buffer.image_encoder.bn.running_mean": torch.ones(2)}
    assert float(trajectory_loss(target, start, target)) == 0.0
    assert float(trajectory_loss(start, start, target)) == pytest.approx(2.0)      # 1 per side
    halfway = {k: v / 2 for k, v in target.items()}
    assert float(trajectory_loss(halfway, start, target)) == pytest.approx(0.5)
    with pytest.raises(PipelineError, match="did not move"):
        trajectory_loss(start, start, start)


def test_distill_step_reaches_pixels_texts_and_alpha(tmp_path):
    from mmdistill.distill.experts import load_trajectory
    from mmdistill.distill.trajectory_matching import distill_step
    p, pairs, cpu = params(), tiny_pairs(size=8), torch.device("cpu")
    train_experts(p, pairs, cpu, resume=False, root=tmp_path / "buf", checkpoints=tmp_path / "ck")
    trajectories = [load_trajectory(e, tmp_path / "buf") for e in range(2)]
    model = build_pair_model(p, 1, 8, [0.5], [0.25], 6, seed=0)
    images = pairs["images"][:4].clone().requires_grad_(True)
    texts = pairs["texts"][::2][:4].clone().requires_grad_(True)
    alpha = torch.tensor(0.01, requires_grad=True)
    opt = torch.optim.SGD([images, texts, alpha], lr=1e-3)

    def loss_at(seed):
        return distill_step(model, trajectories, images, texts, alpha, max_start_epoch=1, expert_epochs=2,
                            syn_steps=2, batch_size=4, generator=torch.Generator().manual_seed(seed))
    loss = loss_at(0)
    assert torch.isfinite(loss) and loss.item() > 0
    loss.backward()
    assert all(t.grad is not None and float(t.grad.abs().sum()) > 0 for t in (images, texts, alpha))
    opt.step()
    assert loss_at(0).item() < loss.item()                # a small step down the gradient lowers Eq. 4
    with pytest.raises(PipelineError, match="more than the buffer's 3 epochs"):
        distill_step(model, trajectories, images, texts, alpha, max_start_epoch=1, expert_epochs=4, syn_steps=1,
                     batch_size=4, generator=torch.Generator())


def test_embed_pairs_names_an_image_without_captions(project, monkeypatch):
    from mmdistill.embed import features
    monkeypatch.setitem(features.TEXT_ENCODERS, "minilm", lambda params, device: HashEncoder())
    set_params(project, **{"prepare.dataset": "fashion_mnist"})
    run_stage("prepare")                                   # plain Fashion-MNIST: no captions
    with pytest.raises(PipelineError, match=r"image \S+ has no captions.*image-text dataset"):
        run_stage("embed_pairs")
    assert not Path("data/pair_text").exists()


def test_unknown_split_is_named():
    from mmdistill.data.pairs import load_pairs, read_captions
    with pytest.raises(PipelineError, match="unknown split 'validation'; valid: train, val, test"):
        read_captions("validation")
    with pytest.raises(PipelineError, match="unknown split 'dev'"):
        load_pairs("dev")


@pytest.mark.slow
def test_dvc_repro_of_the_image_text_chain(project, tmp_path):
    """The image-text stages through `dvc repro` on a tiny Karpathy layout (real MiniLM): exactly their chain runs
    (prepare, embed_pairs, buffer, then a random set, an mttvl set and a coreset, each made and evaluated), and a
    second repro runs nothing."""
    from tests.test_pipeline import ran, sh
    from tests.test_prepare_text import flickr_layout, karpathy_params
    set_params(project, **karpathy_params(flickr_layout(tmp_path / "flickr")), **{
        "imagetext.stages": ["on"], "imagetext.pair_sets": ["random-3"], "imagetext.distill_sets": ["mttvl-3"],
        "imagetext.coreset_sets": ["forgetting-3"], "imagetext.model.dim": 8, "imagetext.buffer.experts": 1, "imagetext.buffer.expert_epochs": 2,
        "imagetext.buffer.batch_size": 4, "imagetext.evaluate.repeats": 1, "imagetext.evaluate.epochs": 1,
        "imagetext.evaluate.batch_size": 4, "imagetext.mttvl.iterations": 2, "imagetext.mttvl.expert_epochs": 1,
        "imagetext.mttvl.max_start_epoch": 1, "imagetext.mttvl.syn_steps": 1})
    (project / ".gitignore").write_text("/data/\n__pycache__/\n")
    sh(project, "git", "init", "-q")
    sh(project, "dvc", "init", "-q")
    targets = ("evaluate_retrieval@random-3", "evaluate_distilled_pairs@mttvl-3", "evaluate_coreset_pairs@forgetting-3")
    out = sh(project, "dvc", "repro", *targets)
    assert ran(out) == {"prepare", "embed_pairs@on", "buffer@on", "distill_pairs@mttvl-3", "select_pairs@forgetting-3",
                        *targets}
    for run in ("random-3", "mttvl-3", "forgetting-3"):
        metrics = json.loads((project / f"outputs/metrics/retrieval-{run}.json").read_text())
        assert set(metrics["convnet3"]) >= {"test_tr_r1_mean", "test_ir_r10_std", "val_tr_r5_mean"}
    assert ran(sh(project, "dvc", "repro", *targets)) == set()


# ---- pair coresets as pair sets (MTT-VL §3.2) ----------------------------------------------------------------

def test_forgetting_ranks_learned_pairs_with_fewest_events_first():
    from mmdistill.selection.forgetting import ForgettingCounter
    from mmdistill.selection.pair_sets import forgetting_ranking
    counter = ForgettingCounter(4)
    # pair 0: learned, forgotten twice; 1: learned once and kept; 2: never learned; 3: learned, forgotten once
    for correct in ([1, 0, 0, 1], [0, 1, 0, 0], [1, 1, 0, 1], [0, 1, 0, 1]):
        counter.update(np.arange(4), np.array(correct, bool))
    assert counter.events.tolist() == [2, 0, 0, 1] and not counter.learned[2]
    assert forgetting_ranking(counter, ["a", "b", "c", "d"], "fewest").tolist() == [1, 3, 0, 2]
    assert forgetting_ranking(counter, ["a", "b", "c", "d"], "most").tolist() == [2, 0, 3, 1]


def test_pds_nearest_pairs_are_distinct_real_pairs():
    from mmdistill.selection.pair_sets import pds_nearest_pairs
    g = np.random.default_rng(0)
    centres = np.eye(3, 8)
    image = centres.repeat(5, 0) + 0.05 * g.standard_normal((15, 8))
    text = image + 0.05 * g.standard_normal((15, 8))
    image, text = (x / np.linalg.norm(x, axis=1, keepdims=True) for x in (image, text))
    chosen = pds_nearest_pairs(image.astype(np.float32), text.astype(np.float32), 3, 0.2, seed=0)
    assert sorted(chosen // 5) == [0, 1, 2]                       # one real pair from each of the 3 groups
    many = pds_nearest_pairs(image.astype(np.float32), text.astype(np.float32), 12, 0.0, seed=0)
    assert len(set(many.tolist())) == 12                          # a nearest pair already taken is not taken twice


def test_stages_select_pairs_and_evaluate_coresets(project, tmp_path, monkeypatch):
    """Each coreset kind picks N distinct train images; evaluate_retrieval trains on them with all their captions;
    bad names and sizes are one-line errors naming the set."""
    from mmdistill.embed import features
    from tests.test_prepare_text import flickr_layout, karpathy_params
    monkeypatch.setitem(features.TEXT_ENCODERS, "minilm", lambda params, device: HashEncoder())
    sets = ["herding-3", "kcenter-3", "forgetting-3", "pds-2"]
    set_params(project, **karpathy_params(flickr_layout(tmp_path / "flickr")), **{
        "imagetext.stages": ["on"], "imagetext.coreset_sets": sets, "imagetext.model.dim": 8,
        "imagetext.buffer.expert_epochs": 2, "imagetext.buffer.batch_size": 4, "embed.input_size": 32,
        "imagetext.evaluate.repeats": 1, "imagetext.evaluate.epochs": 1, "imagetext.evaluate.batch_size": 4})
    run_stage("prepare")
    run_stage("embed_pairs")
    train_uids = load_split_uids("train")
    chosen = {}
    for name in sets:
        run_stage("select_pairs", "--pairs", name)
        from mmdistill.core.storage import read_parquet
        table = read_parquet(f"data/pair_coresets/{name}.parquet")
        uids = table["uid"].to_pylist()
        assert len(uids) == len(set(uids)) == int(name.split("-")[1]) and set(uids) <= set(train_uids)
        assert table["rank"].to_pylist() == list(range(len(uids)))
        chosen[name] = uids
    first = list(chosen["forgetting-3"])
    run_stage("select_pairs", "--pairs", "forgetting-3")                 # seeded: the same choice again
    assert read_parquet("data/pair_coresets/forgetting-3.parquet")["uid"].to_pylist() == first
    run_stage("evaluate_retrieval", "--pairs", "herding-3")
    record = json.loads(Path("outputs/evaluate/retrieval-herding-3.json").read_text())
    assert record["train_images"] == 3 and record["train_texts"] == 15      # all 5 captions of each
    with pytest.raises(PipelineError, match="'herding-7': 7 pairs requested, but the train split holds 6"):
        run_stage("select_pairs", "--pairs", "herding-7")
    with pytest.raises(PipelineError, match="data/pair_coresets/kcenter-2.parquet is missing"):
        run_stage("evaluate_retrieval", "--pairs", "kcenter-2")
    set_params(project, **{"imagetext.pair_sets": ["pds-2"]})
    with pytest.raises(PipelineError, match="'imagetext.pair_sets' lists 'pds-2'.*imagetext.coreset_sets takes"):
        run_stage("select_pairs", "--pairs", "pds-2")


def load_split_uids(split):
    from mmdistill.data.datasets import load_split
    return load_split(split).uids

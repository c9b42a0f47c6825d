"""PDS synthesis (issue 16): the unCLIP decoder (mmdistill.nn.unclip) from tiny random-weight Stable unCLIP
pipelines saved to tmp_path and reloaded, its checks, and the image-text stages unclip_decoder -> synthesize_pairs ->
evaluate_retrieval on a tiny Karpathy layout (directly and through `dvc repro`)."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from mmdistill.core.storage import PipelineError, load_tensors
from mmdistill.nn import diffusion, unclip
from tests.conftest import run_stage, set_params
from tests.test_diffusion import TINY_DIFFUSION, folder_digests, run_killed_after_first_epoch, tiny_text_encoder

torch.set_num_threads(1)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
EMBED = 8
KEYS = {k: f"imagetext.pds_unclip.{k}" for k in ("guidance_scale", "steps", "noise_level")}


def tiny_unclip(folder: Path, image_encoder: bool = True) -> Path:
    """A random-weight StableUnCLIPImg2ImgPipeline saved to `folder` (16x16 RGB, 16-wide text, 8-wide image
    embeddings); with `image_encoder`, a CLIP vision tower and processor as Stable unCLIP ships them."""
    from diffusers import (AutoencoderKL, DDIMScheduler, DDPMScheduler, StableUnCLIPImg2ImgPipeline,
                           UNet2DConditionModel)
    from diffusers.pipelines.stable_diffusion.stable_unclip_image_normalizer import StableUnCLIPImageNormalizer
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection
    torch.manual_seed(0)
    tokenizer = diffusion.clip_tokenizer(folder.parent / f"{folder.name}-vocabulary")
    unet = UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, block_out_channels=(8, 16),
                                layers_per_block=1, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=16,
                                attention_head_dim=4, norm_num_groups=4, class_embed_type="projection",
                                projection_class_embeddings_input_dim=2 * EMBED)
    vae = AutoencoderKL(in_channels=3, out_channels=3, block_out_channels=(8, 16),
                        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                        latent_channels=4, norm_num_groups=4, sample_size=16)
    encoder = processor = None
    if image_encoder:
        encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(
            hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, image_size=32,
            patch_size=8, projection_dim=EMBED))
        processor = CLIPImageProcessor(crop_size=32, size={"shortest_edge": 32})
    pipe = StableUnCLIPImg2ImgPipeline(
        feature_extractor=processor, image_encoder=encoder,
        image_normalizer=StableUnCLIPImageNormalizer(embedding_dim=EMBED),
        image_noising_scheduler=DDPMScheduler(beta_schedule=unclip.NOISING_BETAS), tokenizer=tokenizer,
        text_encoder=tiny_text_encoder(tokenizer, 16), unet=unet, scheduler=DDIMScheduler(steps_offset=1), vae=vae)
    pipe.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def saved_unclip(tmp_path_factory):
    return tiny_unclip(tmp_path_factory.mktemp("unclip") / "tiny")


def decode(pipe, embeds, seed=0, batch_size=2, steps=4, noise_level=0):
    return unclip.decode(pipe, embeds, ["a dog on grass", "two people", "a red car"][:len(embeds)],
                         guidance_scale=5.0, steps=steps, noise_level=noise_level, seed=seed, batch_size=batch_size,
                         resolution=16, channels=3, size=(16, 16), keys=KEYS, device=torch.device("cpu"))


def test_stable_unclip_folders_load_and_decode_embeddings_to_the_same_bytes(saved_unclip, tmp_path):
    """A Stable unCLIP folder (with its CLIP image encoder) and one without an image encoder (the offline decoder's
    form) both reload and generate from `image_embeds`; the same seed gives the same bytes whatever the batching."""
    embeds = torch.randn(3, EMBED, generator=torch.Generator().manual_seed(1))
    pipe = unclip.load_unclip(str(saved_unclip), None, "test", EMBED)
    assert type(pipe.image_encoder).__name__ == "CLIPVisionModelWithProjection"
    first = decode(pipe, embeds)
    assert first.dtype == torch.uint8 and first.shape == (3, 3, 16, 16)
    assert torch.equal(first, decode(pipe, embeds, batch_size=3))
    assert not torch.equal(first, decode(pipe, embeds, seed=1))
    assert not torch.equal(first[:1], decode(pipe, embeds[[1]])[:1])        # the embedding steers the image
    bare = tmp_path / "bare"
    shutil.copytree(saved_unclip, bare)
    for part in ("image_encoder", "feature_extractor"):
        shutil.rmtree(bare / part)
    index = json.loads((bare / "model_index.json").read_text())
    index.update(image_encoder=[None, None], feature_extractor=[None, None])
    (bare / "model_index.json").write_text(json.dumps(index))
    without = unclip.load_unclip(str(bare), None, "test", EMBED)
    assert without.image_encoder is None
    assert torch.equal(decode(without, embeds), first)                     # same decoder, same bytes


def test_unclip_folders_and_settings_are_checked_by_name(saved_unclip, tmp_path):
    for part in ("image_normalizer", "unet"):
        broken = tmp_path / f"no_{part}"
        shutil.copytree(saved_unclip, broken)
        shutil.rmtree(broken / part)
        with pytest.raises(PipelineError, match=rf"no_{part} \(test\) has no {part}/ folder"):
            unclip.load_unclip(str(broken), None, "test")
    wide = tmp_path / "wide"  # its text encoder replaced by a 24-wide one
    shutil.copytree(saved_unclip, wide)
    shutil.rmtree(wide / "text_encoder")
    pipe = unclip.load_unclip(str(saved_unclip), None, "test")
    tiny_text_encoder(pipe.tokenizer, 24).save_pretrained(wide / "text_encoder")
    with pytest.raises(PipelineError, match="cross_attention_dim is 16 but the text encoder's hidden size is 24"):
        unclip.load_unclip(str(wide), None, "test")
    with pytest.raises(PipelineError, match="takes 8-wide image embeddings, the prototypes are 6 wide"):
        unclip.load_unclip(str(saved_unclip), None, "test", 6)
    with pytest.raises(PipelineError, match=r"'imagetext.pds_unclip.guidance_scale' must be >= 1"):
        unclip.check_decoding(0.5, 10, 0, KEYS)
    with pytest.raises(PipelineError, match=r"'imagetext.pds_unclip.noise_level' must be in \[0, 1000\)"):
        unclip.check_decoding(5.0, 10, 1000, KEYS, pipe)
    img2img = tmp_path / "img2img"  # an img2img pipeline is not a decoder: its UNet takes no image embedding
    from tests.test_diffusion import tiny_pipeline
    tiny_pipeline(img2img)
    with pytest.raises(PipelineError, match="has no image_normalizer/ folder"):
        unclip.load_unclip(str(img2img), None, "test")


# ---- the stages on a tiny image-text project -----------------------------------------------------------------

TINY_UNCLIP = {**{k: v for k, v in TINY_DIFFUSION.items() if not k.startswith("distill.")},
               "diffusion.offline.batch_size": 10, "imagetext.pds_unclip.steps": 4,
               "imagetext.pds_unclip.batch_size": 2}


def image_text_project(project, tmp_path, **extra):
    from tests.test_prepare_text import flickr_layout, karpathy_params
    set_params(project, **karpathy_params(flickr_layout(tmp_path / "flickr")), **TINY_UNCLIP, **{
        "imagetext.stages": ["on"], "imagetext.unclip": ["on"], "imagetext.synthesis_sets": ["pds_unclip-2"],
        "imagetext.model.dim": 8, "imagetext.buffer.experts": 1, "imagetext.buffer.expert_epochs": 2,
        "imagetext.buffer.batch_size": 4, "imagetext.evaluate.repeats": 1, "imagetext.evaluate.epochs": 1,
        "imagetext.evaluate.batch_size": 4, **extra})


@pytest.mark.slow
def test_pds_unclip_stages_train_resume_generate_and_evaluate(project, tmp_path, monkeypatch):
    from mmdistill.embed import features
    from tests.test_retrieval import HashEncoder
    monkeypatch.setitem(features.TEXT_ENCODERS, "minilm", lambda params, device: HashEncoder())
    image_text_project(project, tmp_path)
    run_stage("prepare")
    run_stage("embed_pairs")
    run_stage("unclip_decoder")
    out = Path("data/diffusion/pds_unclip")
    record = json.loads((out / "record.json").read_text())
    assert record["train_pairs"] == 30 and record["embed_dim"] == 8 and "seconds" not in record["history"]
    assert len(json.loads(Path("outputs/timings/diffusion/pds_unclip.json").read_text())["epoch_seconds"]) == 2
    metrics = json.loads(Path("outputs/metrics/diffusion/pds_unclip.json").read_text())
    assert metrics["val_loss"] < metrics["val_loss_untrained"]
    pipe = unclip.load_unclip(str(out), None, "test", 8)
    assert pipe.image_encoder is None and pipe.unet.config.class_embed_type == "projection"
    uninterrupted = folder_digests(out)

    # killed after epoch 1, resumed: the same decoder bytes
    shutil.rmtree(out)
    run_killed_after_first_epoch(monkeypatch, "unclip_decoder")
    run_stage("unclip_decoder", "--resume")
    assert folder_digests(out) == uninterrupted

    run_stage("synthesize_pairs", "--pairs", "pds_unclip-2")
    path = Path("data/distilled_pairs/pds_unclip-2.pt")
    first = path.read_bytes()
    run_stage("synthesize_pairs", "--pairs", "pds_unclip-2")
    assert path.read_bytes() == first                                       # same seed, same bytes
    assert Path("outputs/figures/distilled/pds_unclip-2.png").stat().st_size > 0
    made = load_tensors(path)
    assert made["images"].shape == (2, 3, 16, 16) and torch.isfinite(made["images"]).all()
    assert made["texts"].shape == (2, 12) and torch.allclose(made["texts"].norm(dim=1), torch.ones(2))
    from mmdistill.data.pairs import read_captions
    captions = {c for caps in read_captions("train")[1] for c in caps}
    assert set(made["prompts"]) <= captions                                 # retrieved real captions
    train = load_tensors("data/pair_text/train.pt")
    assert not any(torch.allclose(t, e) for t in made["texts"] for e in train["embeddings"])  # prototypes, not copies
    set_params(project, **{"imagetext.pds_unclip.text": "caption"})
    run_stage("synthesize_pairs", "--pairs", "pds_unclip-2")
    as_caption = load_tensors(path)
    assert all(any(torch.equal(t, e) for e in train["embeddings"]) for t in as_caption["texts"])
    assert torch.equal(as_caption["images"], made["images"])
    run_stage("evaluate_retrieval", "--pairs", "pds_unclip-2")
    record = json.loads(Path("outputs/evaluate/retrieval-pds_unclip-2.json").read_text())
    assert record["train_images"] == 2 and record["train_texts"] == 2 and record["student_lr"] == 0.1

    set_params(project, **{"imagetext.unclip": []})
    with pytest.raises(PipelineError, match="'imagetext.synthesis_sets' lists sets, but 'imagetext.unclip' is"):
        run_stage("synthesize_pairs", "--pairs", "pds_unclip-2")
    set_params(project, **{"imagetext.unclip": ["on"], "imagetext.pds_unclip.decoder": "stabilityai/x"})
    with pytest.raises(PipelineError, match="'imagetext.pds_unclip.decoder' = 'stabilityai/x': only 'offline'"):
        run_stage("unclip_decoder")


@pytest.mark.slow
def test_dvc_repro_of_the_synthesis_chain(project, tmp_path):
    """`dvc repro` of a generated set's evaluation runs exactly its chain (decoder included), and nothing again."""
    from tests.test_pipeline import ran, sh
    image_text_project(project, tmp_path)
    (project / ".gitignore").write_text("/data/\n__pycache__/\n")
    sh(project, "git", "init", "-q")
    sh(project, "dvc", "init", "-q")
    target = "evaluate_synthesis_pairs@pds_unclip-2"
    out = sh(project, "dvc", "repro", target)
    assert ran(out) == {"prepare", "embed_pairs@on", "unclip_decoder@on", "synthesize_pairs@pds_unclip-2", target}
    metrics = json.loads((project / "outputs/metrics/retrieval-pds_unclip-2.json").read_text())
    assert np.isfinite(metrics["convnet3"]["test_tr_r1_mean"])
    assert ran(sh(project, "dvc", "repro", target)) == set()


def test_a_prototype_without_caption_members_is_an_error_not_a_nan_row():
    """Found by `benchmarks.run pds_unclip` on label captions (10 distinct texts, 10 prototypes): an empty text
    cluster made its caption feature the mean of nothing, NaN, which only the evaluation's reader caught."""
    from mmdistill.distill.pair_synthesis import prototype_captions
    captions = torch.nn.functional.normalize(torch.randn(6, 4), dim=1)
    features = prototype_captions(captions, [[0, 1], [2], [3, 4, 5]], "pds_unclip-3")
    assert torch.isfinite(features).all() and torch.allclose(features.norm(dim=1), torch.ones(3))
    assert torch.allclose(features[1], captions[2])
    with pytest.raises(PipelineError, match=r"pds_unclip-3: 1 of 3 PDS prototypes have no caption members "
                                            r"\(first: prototype 1\)"):
        prototype_captions(captions, [[0, 1], [], [3]], "pds_unclip-3")

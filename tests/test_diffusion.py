"""The diffusion pipeline of the synthesis methods (mmdistill.nn.diffusion, stage finetune_diffusion) and method vlcp,
with tiny random-weight components saved to tmp_path and reloaded, on the tiny project."""
from __future__ import annotations

import hashlib
import json
import os
import shutil

import pytest
import torch

from mmdistill.core.config import load_params
from mmdistill.core.storage import PipelineError, load_tensors, read_parquet
from mmdistill.data.datasets import dataset_info, load_split
from mmdistill.distill import methods as registry
from mmdistill.nn import diffusion
from tests.conftest import REPO, run_stage, set_params, working_copy

torch.set_num_threads(1)
os.environ.setdefault("HF_HUB_OFFLINE", "1")

# the offline pipeline at a test budget: 16x16 RGB, 8x8x4 latents, a two-level UNet
TINY_DIFFUSION = {
    "diffusion.resolution": 16,
    "diffusion.offline.epochs": 2, "diffusion.offline.batch_size": 50,
    "diffusion.offline.block_out_channels": [8, 16], "diffusion.offline.norm_num_groups": 4,
    "diffusion.offline.attention_head_dim": 4, "diffusion.offline.text_width": 16, "diffusion.offline.text_heads": 2,
    "diffusion.offline.text_layers": 1,
    "vae.block_out_channels": [8, 16], "vae.norm_num_groups": 4, "vae.epochs": 1, "vae.batch_size": 50,
    "distill.vlcp.steps": 10,
}


def tiny_text_encoder(tokenizer, width: int):
    from transformers import CLIPTextConfig, CLIPTextModel
    return CLIPTextModel(CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=width, intermediate_size=2 * width,
                                        num_hidden_layers=1, num_attention_heads=2, max_position_embeddings=77,
                                        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                                        pad_token_id=tokenizer.pad_token_id))


def tiny_pipeline(folder):
    """A random-weight StableDiffusionImg2ImgPipeline saved to `folder` (16x16 RGB images, 16-wide text)."""
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionImg2ImgPipeline, UNet2DConditionModel
    torch.manual_seed(0)
    tokenizer = diffusion.clip_tokenizer(folder.parent / f"{folder.name}-vocabulary")
    unet = UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, block_out_channels=(8, 16),
                                layers_per_block=1, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=16,
                                attention_head_dim=4, norm_num_groups=4)
    vae = AutoencoderKL(in_channels=3, out_channels=3, block_out_channels=(8, 16),
                        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                        latent_channels=4, norm_num_groups=4, sample_size=16)
    pipe = StableDiffusionImg2ImgPipeline(vae=vae, text_encoder=tiny_text_encoder(tokenizer, 16), tokenizer=tokenizer,
                                          unet=unet, scheduler=DDIMScheduler(steps_offset=1), safety_checker=None,
                                          feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def saved_pipeline(tmp_path_factory):
    return tiny_pipeline(tmp_path_factory.mktemp("pipeline") / "tiny")


def folder_digests(folder) -> dict:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_loading_checks_the_folder_and_the_component_widths(saved_pipeline, tmp_path):
    pipe = diffusion.load_pipeline(str(saved_pipeline), None, "param 'diffusion.model'")
    ids = [pipe.tokenizer([t], padding="max_length", max_length=77, return_tensors="pt").input_ids
           for t in ("a red shoe", "a bag")]
    with torch.no_grad():  # the tokenizer's end token is the text encoder's: different prompts, different states
        assert not torch.equal(*(pipe.text_encoder(i).pooler_output for i in ids))
    broken = tmp_path / "no_unet"
    shutil.copytree(saved_pipeline, broken)
    shutil.rmtree(broken / "unet")
    with pytest.raises(PipelineError, match=r"no_unet \(param 'diffusion.model'\) has no unet/ folder"):
        diffusion.load_pipeline(str(broken), None, "param 'diffusion.model'")
    with pytest.raises(PipelineError, match="no pipeline folder at"):
        diffusion.load_pipeline(str(tmp_path / "missing"), None, "param 'diffusion.model'")
    wide = tmp_path / "wide"  # its text encoder replaced by a 24-wide one
    shutil.copytree(saved_pipeline, wide)
    shutil.rmtree(wide / "text_encoder")
    tiny_text_encoder(pipe.tokenizer, 24).save_pretrained(wide / "text_encoder")
    with pytest.raises(PipelineError, match="cross_attention_dim is 16 but the text encoder's hidden size is 24"):
        diffusion.load_pipeline(str(wide), None, "param 'diffusion.model'")


def test_generation_settings_are_checked_by_name():
    keys = {k: f"distill.vlcp.{k}" for k in ("strength", "guidance_scale", "steps")}
    for strength, guidance, steps, message in [(0.0, 10, 50, r"'distill.vlcp.strength' must be in \(0, 1\]"),
                                               (1.5, 10, 50, r"'distill.vlcp.strength' must be in \(0, 1\]"),
                                               (0.7, 0.5, 50, r"'distill.vlcp.guidance_scale' must be >= 1"),
                                               (0.1, 10, 5, r"'distill.vlcp.steps' x 'distill.vlcp.strength'")]:
        with pytest.raises(PipelineError, match=message):
            diffusion.check_generation(strength, guidance, steps, keys)
    diffusion.check_generation(1.0, 1.0, 1, keys)
    params = load_params(REPO / "params.yaml")
    for key, value, message in [("strength", 1.2, r"'distill.vlcp.strength' must be > 0 and <= 1, got 1.2"),
                                ("guidance_scale", 0.9, r"'distill.vlcp.guidance_scale' must be >= 1")]:
        bad = json.loads(json.dumps(params))
        bad["distill"]["vlcp"][key] = value
        with pytest.raises(PipelineError, match=message):
            registry.resolve(bad, "vlcp")


def test_class_names_are_masked_in_captions():
    texts = ["This ankle boot image shows a large Ankle Boot; tags: clog", "This t-shirt/top image shows a shirt"]
    masked = diffusion.captions_for(texts, [9, 0], ["x"] * 9 + ["Ankle boot"], "mask")[:1] + \
        diffusion.captions_for(texts[1:], [0], ["T-shirt/top"], "mask")
    assert masked == ["This item image shows a large item; tags: clog", "This item image shows a shirt"]
    assert diffusion.captions_for(texts, [9, 0], ["x"] * 9 + ["Ankle boot"], "keep") == texts


def test_same_seed_same_images(saved_pipeline):
    pipe = diffusion.load_pipeline(str(saved_pipeline), None, "test")
    init = torch.rand(3, 1, 28, 28)
    keys = {k: k for k in ("strength", "guidance_scale", "steps")}

    def run(batch_size, seed=0):
        return diffusion.generate(pipe, init, ["a shoe", "a bag", "a coat"], strength=0.7, guidance_scale=10.0,
                                  steps=5, seed=seed, batch_size=batch_size, resolution=16, keys=keys,
                                  device=torch.device("cpu"))
    first = run(2)
    assert first.dtype == torch.uint8 and first.shape == (3, 1, 28, 28)
    assert torch.equal(first, run(2))
    assert not torch.equal(first, run(2, seed=1))


@pytest.fixture(scope="module")
def finetuned_template(tmp_path_factory, annotated_template):
    """The annotated tiny project with vlcp enabled, after select and a tiny offline finetune_diffusion."""
    root = tmp_path_factory.mktemp("diffusion") / "project"
    shutil.copytree(annotated_template, root)
    set_params(root, **TINY_DIFFUSION, **{"distill.methods.synthesis": ["vlcp"]})
    cwd = os.getcwd()
    os.chdir(root)
    try:
        run_stage("selection")
        run_stage("finetune_diffusion", "--method", "vlcp")
    finally:
        os.chdir(cwd)
    return root


@pytest.fixture
def finetuned(tmp_path, finetuned_template, monkeypatch):
    return working_copy(finetuned_template, tmp_path, monkeypatch)


@pytest.mark.slow
def test_offline_finetuning_learns_and_writes_a_reloadable_pipeline(finetuned):
    record = json.loads((finetuned / "data/diffusion/vlcp/record.json").read_text())
    metrics = json.loads((finetuned / "outputs/metrics/diffusion/vlcp.json").read_text())
    history = record["history"]
    timings = json.loads((finetuned / "outputs/timings/diffusion/vlcp.json").read_text())
    assert len(history["train_loss"]) == len(timings["epoch_seconds"]) == 2 and len(history["val_loss"]) == 3
    assert "seconds" not in history  # wall time is kept out of the cached output: same seed, same bytes
    assert all(map(torch.isfinite, torch.tensor(history["train_loss"] + history["val_loss"])))
    assert metrics["val_loss"] < metrics["val_loss_untrained"]  # at the same fixed noise and timesteps
    assert record["class_name"] == "mask" and record["train_pairs"] == 100
    assert not (finetuned / "data/checkpoints/diffusion-vlcp").exists()
    pipe = diffusion.load_pipeline(str(finetuned / "data/diffusion/vlcp"), None, "test")
    assert pipe.unet.config.cross_attention_dim == pipe.text_encoder.config.hidden_size == 16


class Interrupted(Exception):
    pass


def run_killed_after_first_epoch(monkeypatch, *stage_args: str) -> None:
    """Run a diffusion-training stage that is killed right after its epoch-1 checkpoint is written."""
    save = diffusion._save_checkpoint

    def interrupt_after_epoch_1(work, epoch, *args):
        save(work, epoch, *args)
        raise Interrupted

    with monkeypatch.context() as patch, pytest.raises(Interrupted):
        patch.setattr(diffusion, "_save_checkpoint", interrupt_after_epoch_1)
        run_stage(*stage_args)


@pytest.mark.slow
def test_resume_after_an_interruption_gives_the_same_bytes(finetuned, monkeypatch):
    out = finetuned / "data/diffusion/vlcp"
    uninterrupted = folder_digests(out)
    metrics = (finetuned / "outputs/metrics/diffusion/vlcp.json").read_bytes()
    shutil.rmtree(out)
    run_killed_after_first_epoch(monkeypatch, "finetune_diffusion", "--method", "vlcp")
    assert not out.exists()
    assert sorted(p.name for p in (finetuned / "data/checkpoints/diffusion-vlcp").glob("epoch-*")) == \
        ["epoch-0001.pt"]
    run_stage("finetune_diffusion", "--method", "vlcp", "--resume")
    assert folder_digests(out) == uninterrupted
    assert (finetuned / "outputs/metrics/diffusion/vlcp.json").read_bytes() == metrics


@pytest.mark.slow
def test_vlcp_writes_a_set_the_evaluate_stage_scores(finetuned):
    run_stage("distill", "--method", "vlcp", "--ipc", "2")
    out = finetuned / "data/distilled/vlcp-ipc2.pt"
    first = out.read_bytes()
    run_stage("distill", "--method", "vlcp", "--ipc", "2")
    assert out.read_bytes() == first  # same seed, same bytes
    synthetic = load_tensors(out)
    assert synthetic["images"].shape == (20, 1, 28, 28) and torch.isfinite(synthetic["images"]).all()
    assert synthetic["labels"].tolist() == [c for c in range(10) for _ in range(2)]
    assert synthetic["info"]["settings"] == load_params()["distill"]["vlcp"]
    kmeans = read_parquet(finetuned / "data/selections/kmeans-ipc2.parquet", ["label", "cluster", "uid"])
    inits = [u for _, _, u in sorted(zip(*(kmeans[c].to_pylist() for c in ("label", "cluster", "uid"))))]
    assert synthetic["source_uids"] == inits  # the real image nearest each centre
    train = load_split("train")
    row = {u: i for i, u in enumerate(train.uids)}
    assert not torch.equal(synthetic["images"], train.normalized()[[row[u] for u in inits]])  # generated, not copied
    prompts, class_names = synthetic["prompts"], dataset_info()["class_names"]
    assert len(prompts) == 20 and len(set(prompts)) > 1
    assert all(class_names[y].lower() not in p.lower() for p, y in zip(prompts, synthetic["labels"].tolist()))
    run_stage("evaluate", "--method", "vlcp", "--ipc", "2")
    metrics = json.loads((finetuned / "outputs/metrics/vlcp-ipc2.json").read_text())
    assert 0 <= metrics["convnet3"]["test_accuracy_mean"] <= 100


@pytest.mark.slow
def test_a_saved_pipeline_is_fine_tuned_with_lora_fused_into_its_unet(finetuned, saved_pipeline):
    """diffusion.model = a local folder (the real-weights path, VLCP's finetune block): LoRA adapters are the only
    trained weights, fused into the attention projections of the saved UNet; VAE and text encoder stay as loaded."""
    from safetensors.torch import load_file
    set_params(finetuned, **{"diffusion.model": str(saved_pipeline), "diffusion.finetune.epochs": 1,
                             "diffusion.finetune.batch_size": 50, "diffusion.finetune.lora_rank": 2,
                             "diffusion.finetune.lr": 0.01})
    run_stage("finetune_diffusion", "--method", "vlcp")
    out = finetuned / "data/diffusion/vlcp"
    for part in ("vae/diffusion_pytorch_model.safetensors", "text_encoder/model.safetensors"):
        assert torch.equal(*(torch.cat([t.flatten() for _, t in sorted(load_file(f / part).items())])
                             for f in (out, saved_pipeline)))
    before = load_file(saved_pipeline / "unet/diffusion_pytorch_model.safetensors")
    after = load_file(out / "unet/diffusion_pytorch_model.safetensors")
    assert sorted(after) == sorted(before)  # fused: no adapter weights left
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(any(f".{m}." in k for m in ("to_q", "to_k", "to_v", "to_out")) for k in changed)
    record = json.loads((out / "record.json").read_text())
    assert record["model"] == str(saved_pipeline) and record["settings"]["block"] == "diffusion.finetune"
    diffusion.load_pipeline(str(out), None, "test")

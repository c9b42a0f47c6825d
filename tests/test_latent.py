"""Stage vae and the latent parameterisation of the distillation engine, on the tiny project."""
import hashlib
import json
import os
import shutil

import pytest
import torch

from mmdistill.core.config import load_params
from mmdistill.core.paths import vae_dir
from mmdistill.core.storage import PipelineError, load_tensors
from mmdistill.data.datasets import load_split
from mmdistill.nn import vae
from tests.conftest import make_project, run_stage, set_params, working_copy
from tests.test_distill import dm_objective

torch.set_num_threads(1)
CPU = torch.device("cpu")
TINY_VAE = {"vae.block_out_channels": [8, 16], "vae.norm_num_groups": 4, "vae.epochs": 3, "vae.batch_size": 32}



@pytest.fixture(scope="session")
def trained_template(tmp_path_factory, fashion_dir):
    """Built once: the tiny project after prepare and a tiny vae stage for dm (data/vae/dm)."""
    root = make_project(tmp_path_factory.mktemp("latent") / "project", fashion_dir)
    cwd = os.getcwd()
    os.chdir(root)
    try:
        run_stage("prepare")
        set_params(root, **TINY_VAE)
        run_stage("vae", "--method", "dm")
    finally:
        os.chdir(cwd)
    return root


@pytest.fixture
def trained(tmp_path, trained_template, monkeypatch):
    """A fresh copy of the trained template, made the cwd."""
    return working_copy(trained_template, tmp_path, monkeypatch)


def digest(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def test_vae_stage_trains_and_round_trips(trained):
    from diffusers import AutoencoderKL
    params = load_params()
    metrics = json.loads(open("outputs/metrics/vae/dm.json").read())
    record = json.loads(open("data/vae/dm/record.json").read())
    assert set(metrics) == {"val_mse", "val_psnr", "train_loss_last_epoch"}
    assert record["latent_shape"] == [4, 14, 14] and record["train_images"] == 100
    val = load_split("val")
    torch.manual_seed(params["seed"])  # the stage's initialisation: training must beat it
    untrained_mse, _ = vae.reconstruction(vae.build_vae(params, 1, 28), val.images, CPU, 64)
    assert 0 < metrics["val_mse"] < untrained_mse
    loaded = AutoencoderKL.from_pretrained(vae_dir("dm"))
    assert loaded.config.scaling_factor == record["scaling_factor"] != 1.0
    mse, _ = vae.reconstruction(loaded, val.images, CPU, 64)
    assert abs(mse - metrics["val_mse"]) < 1e-6
    first = digest(vae_dir("dm") / "diffusion_pytorch_model.safetensors")
    run_stage("vae", "--method", "dm")
    assert digest(vae_dir("dm") / "diffusion_pytorch_model.safetensors") == first  # same seed, same bytes
    run_stage("vae", "--method", "dsa")  # one VAE per method, the same training
    assert digest(vae_dir("dsa") / "diffusion_pytorch_model.safetensors") == first
    with pytest.raises(PipelineError, match="selection method has no latent runs"):
        run_stage("vae", "--method", "random")


def test_latent_dm_reduces_the_gap_and_decodes_for_evaluation(trained):
    set_params(trained, **{"distill.dm.iterations": 12, "distill.dm.batch_real": 10, "distill.dm.augment": False})
    run_stage("distill", "--method", "dm", "--ipc", "1", "--latent")
    out = load_tensors("data/distilled/dm-latent-ipc1.pt")
    train = load_split("train")
    space = vae.latent_space(load_params(), "dm", CPU)
    start = space.final(space.encode(train.normalized()[[train.uids.index(u) for u in out["source_uids"]]]))
    images, latents = out["images"], out["latents"]
    assert images.shape == (10, 1, 28, 28) and images.dtype == torch.float32 and latents.shape == (10, 4, 14, 14)
    low, high = (0 - train.mean[0]) / train.std[0], (1 - train.mean[0]) / train.std[0]
    assert low - 1e-5 <= images.min() and images.max() <= high + 1e-5
    assert torch.allclose(images, space.final(latents))  # the stored latents decode to the stored images
    assert out["vae"]["vae"] == "offline" and out["info"]["latent"]["vae"] == "offline"
    assert (trained / "outputs/figures/distilled/dm-latent-ipc1.png").exists()
    assert not (trained / "data/distilled/dm-ipc1.pt").exists()
    real = train.normalized()[torch.argsort(train.labels, stable=True)]
    assert dm_objective(images, real, 10) < 0.8 * dm_objective(start, real, 10)


def offline_vae(method: str) -> None:
    """data/vae/{method}: the same VAE stage vae --method {method} would train (it does not depend on the method)."""
    shutil.copytree(vae_dir("dm"), vae_dir(method))


def test_latent_gradient_matching_runs(trained):
    offline_vae("dsa")
    set_params(trained, **{"distill.dsa.iterations": 2, "distill.dsa.batch_real": 4,
                           "distill.dsa.outer_loop": 2, "distill.dsa.inner_loop": 1})
    run_stage("distill", "--method", "dsa", "--ipc", "1", "--latent")
    out = load_tensors("data/distilled/dsa-latent-ipc1.pt")
    assert out["images"].shape == (10, 1, 28, 28) and out["latents"].shape == (10, 4, 14, 14)
    assert len(out["loss"]) == 2 and torch.isfinite(out["loss"]).all()


@pytest.mark.parametrize("method", ["masked_dm", "masked_dc", "dsdm"])
def test_latent_masked_methods_and_dsdm_run_and_store_decodable_latents(trained, method):
    if method == "dsdm":
        set_params(trained, **{"pretrain.models": 2, "pretrain.epochs": 1, "distill.dsdm.batch_real": 4})
        run_stage("pretrain")
    else:
        run_stage("tag")
        run_stage("ground")
    offline_vae(method)
    set_params(trained, **{f"distill.{method}.iterations": 2, f"distill.{method}.batch_real": 4})
    if method == "masked_dc":
        set_params(trained, **{"distill.masked_dc.outer_loop": 2, "distill.masked_dc.inner_loop": 1})
    run_stage("distill", "--method", method, "--ipc", "1", "--latent")
    out = load_tensors(f"data/distilled/{method}-latent-ipc1.pt")
    space = vae.latent_space(load_params(), method, CPU)
    assert out["latents"].shape == (10, 4, 14, 14) and len(out["loss"]) == 2 and torch.isfinite(out["loss"]).all()
    if method == "dsdm":  # the latents hold the factor-2 tiles; images are the 4 decoded sub-images per slot
        assert out["images"].shape == (40, 1, 28, 28) and torch.allclose(out["encoded"], space.final(out["latents"]))
    else:
        assert out["images"].shape == (10, 1, 28, 28) and torch.allclose(out["images"], space.final(out["latents"]))


def test_latent_is_deterministic_and_resumes(trained):
    set_params(trained, **{"distill.dm.iterations": 4, "distill.engine.checkpoint_every": 2})
    latent = ("distill", "--method", "dm", "--ipc", "1", "--latent")
    run_stage(*latent)
    uninterrupted = digest("data/distilled/dm-latent-ipc1.pt")
    run_stage(*latent)
    assert digest("data/distilled/dm-latent-ipc1.pt") == uninterrupted
    (trained / "data/checkpoints/dm-latent-ipc1.pt").unlink()
    set_params(trained, **{"distill.dm.iterations": 2})
    run_stage(*latent)
    checkpoint = load_tensors("data/checkpoints/dm-latent-ipc1.pt")
    assert checkpoint["syn"].shape == (10, 4, 14, 14) and checkpoint["fingerprint"]["parameterisation"] == "latent"
    set_params(trained, **{"distill.dm.iterations": 4})
    run_stage(*latent, "--resume")
    assert digest("data/distilled/dm-latent-ipc1.pt") == uninterrupted
    shutil.copytree(vae_dir("dm"), trained / "other-vae")  # the same weights by path: another VAE source
    set_params(trained, **{"distill.latent.vae": str(trained / "other-vae")})
    with pytest.raises(PipelineError, match="written with other settings"):
        run_stage(*latent, "--resume")


def test_pretrained_rgb_vae_by_path_with_grey_data(project, tmp_path):
    """A tiny random-weight RGB AutoencoderKL with three downsamples (8x), saved and loaded by path: grey
    28x28 data is repeated to RGB and resized to 32x32 (the next multiple of 8) and back."""
    from diffusers import AutoencoderKL
    run_stage("prepare")
    torch.manual_seed(0)
    model = AutoencoderKL(in_channels=3, out_channels=3, block_out_channels=(8, 8, 16, 16), layers_per_block=1,
                          down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                          latent_channels=4, norm_num_groups=4, scaling_factor=0.5)
    model.save_pretrained(tmp_path / "rgb-vae")
    set_params(project, **{"distill.latent.vae": str(tmp_path / "rgb-vae"), "distill.dm.iterations": 2})
    space = vae.latent_space(load_params(), "dm", CPU)
    assert space.vae_size == (32, 32) and space.scale == 0.5
    images = load_split("train").normalized()[:3]
    latents = space.encode(images)
    assert latents.shape == (3, 4, 4, 4) and space.decode(latents).shape == (3, 1, 28, 28)
    run_stage("distill", "--method", "dm", "--ipc", "1", "--latent")
    out = load_tensors("data/distilled/dm-latent-ipc1.pt")
    assert out["images"].shape == (10, 1, 28, 28) and out["latents"].shape == (10, 4, 4, 4)
    assert out["vae"]["vae"] == str(tmp_path / "rgb-vae") and out["vae"]["scaling_factor"] == 0.5


def test_shift_factor_latents_follow_diffusers_convention(tmp_path):
    """SD3/Flux VAEs have a shift_factor: latents are (z - shift) * scale, decoded as vae.decode(l / scale + shift)."""
    from diffusers import AutoencoderKL
    torch.manual_seed(0)
    AutoencoderKL(in_channels=3, out_channels=3, block_out_channels=(8, 16), layers_per_block=1,
                  down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                  latent_channels=4, norm_num_groups=4, scaling_factor=1.5, shift_factor=0.4).save_pretrained(
        tmp_path / "sd3-like-vae")
    params = {"distill": {"latent": {"vae": str(tmp_path / "sd3-like-vae"), "vae_revision": "main",
                                     "vae_subfolder": ""}}}
    model, source = vae.load_vae(params, "dm")
    mean, std = 0.3, 0.25
    space = vae.Latent(model, source, [mean], [std], 1, (16, 16), CPU)
    images = torch.randn(2, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        z = model.encode(((images * std + mean) * 2 - 1).expand(-1, 3, -1, -1)).latent_dist.mean
        latents = space.encode(images)
        assert torch.allclose(latents, (z - 0.4) * 1.5, atol=1e-6)
        decoded = model.decode(latents / 1.5 + 0.4).sample.mean(1, keepdim=True)
        assert torch.allclose(space.decode(latents), ((decoded + 1) / 2 - mean) / std, atol=1e-5)
    assert space.source["shift_factor"] == 0.4 and space.source["scaling_factor"] == 1.5  # in the fingerprint


def test_clear_errors(project, tmp_path):
    run_stage("prepare")
    with pytest.raises(PipelineError, match="--latent: method 'random' selects real images"):
        run_stage("distill", "--method", "random", "--ipc", "1", "--latent")
    with pytest.raises(PipelineError, match="'offline' but data/vae/dm has no trained VAE.*stages.vae --method dm"):
        run_stage("distill", "--method", "dm", "--ipc", "1", "--latent")
    set_params(project, **{"distill.latent.vae": str(tmp_path / "missing")})
    with pytest.raises(PipelineError, match="'distill.latent.vae': no weights at"):
        run_stage("distill", "--method", "dm", "--ipc", "1", "--latent")
    (tmp_path / "empty").mkdir()
    set_params(project, **{"distill.latent.vae": str(tmp_path / "empty")})
    with pytest.raises(PipelineError, match="cannot load AutoencoderKL .*param 'distill.latent.vae'"):
        run_stage("distill", "--method", "dm", "--ipc", "1", "--latent")
    set_params(project, **{"vae.norm_num_groups": 5})
    with pytest.raises(PipelineError, match="'vae.norm_num_groups' = 5 must divide"):
        run_stage("vae", "--method", "dm")

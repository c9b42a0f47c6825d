"""The contract every registered distillation method keeps, on the tiny data (one test per method of
mmdistill.distill.methods.REGISTRY, so a new method is checked by adding it there):

- it runs and writes its set (labels class-major, one source uid per image, the resolved settings in info);
- an optimising method's loss decreases: the mean of the last quarter of its loss curve is below that of the first
  quarter, with each iteration's network and augmentation held fixed (LOSS_CHECK says why);
- two runs with the same seed give the same bytes;
- `--resume` after an interruption gives the same bytes as the uninterrupted run.

Plus: a new method is one module and one registry line (a toy method written to tmp_path), a method listed in the
wrong group of `distill.methods` is an error naming its group, and resolve() overlays a family block with a
method's block in one validated place.
"""
from __future__ import annotations

import os
import shutil
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import yaml

from mmdistill.core.config import load_params, validate
from mmdistill.core.schema import schema
from mmdistill.core.storage import PipelineError, load_tensors
from mmdistill.data.datasets import resolve_flip
from mmdistill.distill import distribution_matching, gradient_matching
from mmdistill.distill import methods as registry
from mmdistill.distill.engine import Engine
from mmdistill.distill.initial import selection_settings
from mmdistill.nn.nets import make_net
from tests.conftest import REPO, run_stage, set_params
from tests.test_diffusion import TINY_DIFFUSION

torch.set_num_threads(1)
os.environ.setdefault("HF_HUB_OFFLINE", "1")

# The contract's budget on the tiny data (10 train images per class): every real image of a class in each batch.
BUDGET = {
    "distill.distribution.batch_real": 10,
    "distill.gradient.batch_real": 10,
    "distill.gradient.outer_loop": 1,
    "distill.gradient.inner_loop": 1,
    "distill.dsdm.batch_real": 10,
    "distill.engine.checkpoint_every": 2,
    "pretrain.models": 2, "pretrain.epochs": 1,
    "caption_head.epochs": 2, "caption_head.width": 8,
    **TINY_DIFFUSION,
}
# The loss check's settings, by family (None: a method with its own complete block, dsdm). It holds the
# per-iteration draws fixed (one network, no augmentation): with a fresh network and augmentation every iteration,
# gradient matching started from real images shows no trend within tens of iterations on this data (measured: DC,
# 40 iterations, lr 0.1: mean of the first 10 losses 421, of the last 10 449). Gradient matching steps at a smaller
# lr: masked_dc's masked term is rugged on the tiny data's small masks (alone it does not fall even at lr 0.001, and
# rises at 0.1), so at lr 0.1 masked_dc's sum stays flat; at 0.03 its full term brings it down.
LOSS_CHECK = {"distribution": {"iterations": 12}, "gradient": {"iterations": 16, "lr": 0.03}, None: {"iterations": 12}}
RUN_ITERATIONS = 4  # determinism and resume: the method's own settings; interrupted in iteration 3 (checkpoint at 2)
STAGES = {"selection": ["selection"], "pool": ["pretrain"], "caption_match": ["caption_head"],  # by group
          "synthesis": ["selection", ("finetune_diffusion", "--method", "vlcp")]}
FAST = {"random", "dm"}  # `make test-fast` keeps one selection and one optimising method; the rest take 5-20 s each


class Interrupted(Exception):
    pass


def same_network(name, channels, classes, size):
    """Every iteration's "fresh" network is the same one (for the loss check)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return make_net(name, channels, classes, size)


@pytest.fixture(scope="module")
def template(tmp_path_factory, annotated_template):
    """The annotated tiny project with the contract's budget; stages a group needs are run on first use."""
    root = tmp_path_factory.mktemp("contract") / "project"
    shutil.copytree(annotated_template, root)
    set_params(root, **BUDGET)
    return {"root": root, "done": set()}


@pytest.fixture
def project_for(template, tmp_path, monkeypatch):
    """project_for(method): a fresh copy of the template with what the method's group reads, made the cwd."""
    def make(name: str) -> Path:
        root = template["root"]
        for stage in STAGES.get(registry.get(name).group, []):
            if stage not in template["done"]:
                cwd = os.getcwd()
                os.chdir(root)
                try:
                    run_stage(*((stage,) if isinstance(stage, str) else stage))
                finally:
                    os.chdir(cwd)
                template["done"].add(stage)
        copy = tmp_path / "project"
        shutil.copytree(root, copy)
        monkeypatch.chdir(copy)
        return copy
    return make


def check_contract(name: str, root: Path, monkeypatch) -> None:
    method = registry.get(name)
    command = ("distill", "--method", name, "--ipc", "1")
    out, grid = root / f"data/distilled/{name}-ipc1.pt", root / f"outputs/figures/distilled/{name}-ipc1.png"
    if not method.engine:
        run_stage(*command)
        first, first_grid = out.read_bytes(), grid.read_bytes()
        run_stage(*command)
        assert out.read_bytes() == first and grid.read_bytes() == first_grid
        run_stage(*command, "--resume")  # nothing to resume: the same set
        assert out.read_bytes() == first
        check_output(name, load_tensors(out), iterations=0)
        return
    params_file = root / "params.yaml"
    own = params_file.read_text()
    settings, _ = registry.resolve(load_params(), name)
    assert "iterations" in settings, f"{name} runs on the engine but has no 'iterations' setting"
    key = f"distill.{name}.iterations"

    # the loss decreases: the mean of the last quarter of the curve is below that of the first quarter
    check = LOSS_CHECK[method.family_of(load_params()["distill"][name])]
    n = check["iterations"]
    set_params(root, **{f"distill.{name}.{k}": v for k, v in check.items()},
               **({f"distill.{name}.augment": False} if "augment" in settings else {}))
    with monkeypatch.context() as patch:
        patch.setattr(distribution_matching, "make_net", same_network)
        patch.setattr(gradient_matching, "make_net", same_network)
        run_stage(*command)
    loss, k = load_tensors(out)["loss"], n // 4
    check_output(name, load_tensors(out), iterations=n)
    assert loss[-k:].mean() < loss[:k].mean(), f"{name}: loss {loss.tolist()} does not decrease"
    params_file.write_text(own)

    # two runs with the same seed give the same bytes
    set_params(root, **{key: RUN_ITERATIONS})
    run_stage(*command)
    uninterrupted, uninterrupted_grid = out.read_bytes(), grid.read_bytes()
    check_output(name, load_tensors(out), iterations=RUN_ITERATIONS)
    run_stage(*command)
    assert out.read_bytes() == uninterrupted and grid.read_bytes() == uninterrupted_grid

    # interrupted during iteration 3 (after the checkpoint at 2), then resumed: the same bytes
    checkpoint = root / f"data/checkpoints/{name}-ipc1.pt"
    checkpoint.unlink()
    out.unlink()
    update = Engine.update

    def interrupting_update(engine, loss, *args, **kwargs):
        if len(engine.history) == 2:
            raise Interrupted
        update(engine, loss, *args, **kwargs)

    with monkeypatch.context() as patch, pytest.raises(Interrupted):
        patch.setattr(Engine, "update", interrupting_update)
        run_stage(*command)
    assert not out.exists() and load_tensors(checkpoint)["iteration"] == 2
    run_stage(*command, "--resume")
    assert out.read_bytes() == uninterrupted


def check_output(name: str, out: dict, iterations: int) -> None:
    classes = 10
    labels = out["labels"].tolist()
    assert labels == sorted(labels) and set(labels) == set(range(classes))
    assert len(out["images"]) == len(labels) == len(out["source_uids"])
    assert out["images"].dtype == torch.float32 and torch.isfinite(out["images"]).all()
    assert len(out["loss"]) == iterations and torch.isfinite(out["loss"]).all()
    expected = dict(registry.resolve(load_params(), name)[0])
    if "flip" in expected:  # recorded as the value used: `auto` is the prepared dataset's default
        expected["flip"] = resolve_flip(expected["flip"], "flip")
    expected.update(selection_settings(name, 1))  # kcenter, forgetting: the choice their selection was made with
    assert out["info"]["method"] == name and out["info"]["settings"] == expected


@pytest.mark.parametrize("name", [m if m in FAST else pytest.param(m, marks=pytest.mark.slow)
                                  for m in registry.REGISTRY])
def test_method_contract(name, project_for, monkeypatch):
    check_contract(name, project_for(name), monkeypatch)


def test_the_earlier_forms_are_named_methods():
    """The earlier forms of masked_dm / masked_dc are the same methods under other names whose params blocks hold
    them (their contract is checked by test_method_contract like every registered method): masked_dm_means pairs
    dm's full term with the class-mean gap and overlays the distribution family, masked_dc_cosine keeps DC's
    distance."""
    params = repo_params()
    means, where = registry.resolve(params, "masked_dm_means")
    assert means["full_term"] == "dm" and means["masked_term"] == "class_means"
    assert "net_lr" not in means and where["lr"] == "distill.distribution.lr"
    assert means["iterations"] == params["distill"]["distribution"]["iterations"]
    assert registry.resolve(params, "masked_dc_cosine")[0]["masked_distance"] == "cosine"
    assert registry.resolve(params, "masked_dc")[0]["masked_distance"] == "l2"
    assert "forgetting_most" not in params["distill"]["methods"]["selection"]  # not run by default (cost)
    assert params["distill"]["methods"]["masked"] == ["masked_dm"]


TOY = '''
    """toy: dm started from the last K train images of each class, with its own key `weight`."""
    from mmdistill.core.config import Float
    from mmdistill.distill.distribution_matching import distribution_matching
    from mmdistill.distill.methods import Method, Synthetic


    def run(run):
        labels = run.train.labels.tolist()
        init = [i for c in range(run.classes) for i in [j for j, y in enumerate(labels) if y == c][-run.ipc:]]
        images, history, outputs = distribution_matching(run, init, run.settings["weight"], None)
        return Synthetic(images, init, history, outputs)


    METHOD = Method("toy", group="distribution", family="distribution", keys={"weight": Float(above=0)}, run=run,
                    engine=True)
'''


@pytest.fixture
def toy(tmp_path, monkeypatch):
    """A method added the documented way: one module (here in tmp_path, on sys.path) and one registry line."""
    folder = tmp_path / "plugins"
    folder.mkdir()
    (folder / "toy_distill_method.py").write_text(textwrap.dedent(TOY))
    monkeypatch.syspath_prepend(str(folder))
    monkeypatch.setitem(registry.REGISTRY, "toy", "toy_distill_method")
    yield "toy"
    sys.modules.pop("toy_distill_method", None)


def test_a_new_method_is_one_module_and_one_registry_line(toy, project_for, monkeypatch):
    root = project_for("dm")
    with pytest.raises(PipelineError, match="missing param 'distill.toy'"):  # its params block is its config
        load_params()
    set_params(root, **{"distill.toy": {"weight": 1.0}, "distill.methods.distribution": ["dm", "toy"]})
    assert ("toy", False) in registry.enabled(load_params())
    check_contract("toy", root, monkeypatch)
    assert load_tensors(root / "data/distilled/toy-ipc1.pt")["info"]["settings"]["weight"] == 1.0


def test_a_method_in_the_wrong_group_is_an_error_naming_its_group(toy, project):
    set_params(project, **{"distill.toy": {"weight": 1.0}})
    load_params()
    for group, listed, message in [
        ("masked", ["masked_dm", "toy"], "'distill.methods.masked' lists 'toy', which belongs in group 'distribution'"),
        ("selection", ["random", "dm"], "'distill.methods.selection' lists 'dm', which belongs in group "
                                        "'distribution'"),
        ("latent", ["masked_dm"], "lists 'masked_dm', a method of group 'masked'; group 'latent' runs methods of "
                                  "groups distribution, gradient"),
        ("latent", ["random"], "a method of group 'selection'"),
        ("gradient", ["dc", "mtt"], "unknown method 'mtt'; valid: random, kmeans"),
        ("gradient", ["dc", "dc"], "lists a method twice"),
    ]:
        params = yaml.safe_load((project / "params.yaml").read_text())
        params["distill"]["methods"][group] = listed
        with pytest.raises(PipelineError, match=message):
            validate(params, schema())
    set_params(project, **{"distill.methods.latent": ["dm", "toy", "dsa"]})  # distribution and gradient methods
    assert ("toy", True) in registry.enabled(load_params())


def repo_params() -> dict:
    return yaml.safe_load((REPO / "params.yaml").read_text())


def test_resolve_overlays_the_family_block_with_the_method_block():
    params = repo_params()
    validate(params, schema())
    dc, where = registry.resolve(params, "dc")
    dsa, _ = registry.resolve(params, "dsa")
    assert list(dc) == list(params["distill"]["gradient"]) and dc["augment"] is False and dsa["augment"] is True
    assert {k: v for k, v in dc.items() if k != "augment"} == {k: v for k, v in dsa.items() if k != "augment"}
    assert where["augment"] == "distill.dc.augment" and where["lr"] == "distill.gradient.lr"
    masked, _ = registry.resolve(params, "masked_dm")  # full_term dc (the paper's pairing): the gradient family
    assert masked == {**params["distill"]["gradient"], **params["distill"]["masked_dm"]}
    masked, _ = registry.resolve(params, "masked_dm_means")  # full_term dm: the distribution family
    assert masked == {**params["distill"]["distribution"], **params["distill"]["masked_dm_means"]}
    assert registry.resolve(params, "random") == ({}, {})
    assert registry.resolve(params, "dsdm")[0] == params["distill"]["dsdm"]
    assert registry.params_read("masked_dm", False) == ["distill.distribution", "distill.gradient",
                                                         "distill.masked_dm", "distill.engine", "dsa"]
    latent_dm = ["distill.distribution", "distill.dm", "distill.engine", "distill.latent", "dsa"]
    assert registry.params_read("dm", True) == latent_dm
    assert registry.params_read("random", False) == []
    assert {registry.get(name).group for name in registry.REGISTRY} == set(registry.GROUPS) - {"latent"}


@pytest.mark.parametrize("method, edit, message", [
    ("dm", lambda d: d["dm"].update(iteratons=5), r"unknown param 'distill.dm.iteratons'.*'distill.dm.iterations'"),
    ("dc", lambda d: d["gradient"].update(net_lrr=0.1), r"'distill.gradient.net_lrr'.*'distill.gradient.net_lr'"),
    ("masked_dc", lambda d: d["masked_dc"].pop("full_weight"), r"missing param 'distill.masked_dc.full_weight'"),
    ("dc", lambda d: d["dc"].update(class_gradients="jit"), r"'distill.dc.class_gradients' = 'jit' is not one of"),
    ("masked_dm_means", lambda d: d["masked_dm_means"].update(net_lr=0.1),
     r"'distill.masked_dm_means.net_lr' is not a key of family 'distribution'"),
    ("masked_dm", lambda d: d["masked_dm"].update(masked_term="means"), r"'distill.masked_dm.masked_term' = 'means'"),
    ("masked_dc", lambda d: d["masked_dc"].update(masked_distance="l1"), r"'distill.masked_dc.masked_distance' = 'l1'"),
    ("dm", lambda d: d["distribution"].update(lr=-1.0), r"'distill.distribution.lr' must be > 0"),
])
def test_resolve_validates_in_one_place(method, edit, message):
    params = repo_params()
    edit(params["distill"])
    with pytest.raises(PipelineError, match=message):
        registry.resolve(params, method)

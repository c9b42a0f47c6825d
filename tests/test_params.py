"""params.yaml against core/schema.py: a bad key or value is an error naming the key, before any stage does work."""
import ast
import copy
import hashlib
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from mmdistill.core.config import load_params, param
from mmdistill.core.storage import PipelineError
from tests.conftest import REPO, make_project, tiny_params

SRC = REPO / "src" / "mmdistill"


@pytest.fixture(scope="module")
def repo_params() -> dict:
    return yaml.safe_load((REPO / "params.yaml").read_text())


def changed(params: dict, key: str, value=None, *, delete=False, rename=None, add=None) -> dict:
    """A deep copy of `params` with dotted `key` set to `value`, deleted, renamed to `rename`, or with a sibling
    key `add` (= value) added next to it."""
    out = copy.deepcopy(params)
    *parents, last = key.split(".")
    node = out
    for part in parents:
        node = node[part]
    if delete:
        del node[last]
    elif rename:
        node[rename] = node.pop(last)
    elif add:
        node[add] = value
    else:
        node[last] = value
    return out


def load(tmp_path: Path, params: dict) -> dict:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return load_params(path)


def test_repository_params_validate():
    params = load_params(REPO / "params.yaml")
    assert params["evaluate"]["lr"] > 0


def test_tiny_test_params_validate(tmp_path):
    load(tmp_path, tiny_params(tmp_path))


@pytest.mark.parametrize("key, add, message", [
    ("distill.distribution.iterations", "iteratons",
     r"unknown param 'distill\.distribution\.iteratons'.*did you mean 'distill\.distribution\.iterations'"),
    ("evaluate.repeats", "repeat", r"unknown param 'evaluate\.repeat'.*did you mean 'evaluate\.repeats'"),
    ("prepare.max_train_per_class", "max_train_per_clas",
     r"unknown param 'prepare\.max_train_per_clas'.*did you mean 'prepare\.max_train_per_class'"),
    ("evaluate", "evalute", r"unknown param 'evalute'.*did you mean 'evaluate'"),
])
def test_misspelt_key_is_named_with_the_closest_valid_one(tmp_path, repo_params, key, add, message):
    """Written beside the right key, or instead of it (the right key then missing): the misspelling is named."""
    with pytest.raises(PipelineError, match=message):
        load(tmp_path, changed(repo_params, key, 5, add=add))
    with pytest.raises(PipelineError, match=message):
        load(tmp_path, changed(repo_params, key, rename=add))


def test_missing_key_is_named(tmp_path, repo_params):
    with pytest.raises(PipelineError, match=r"missing param 'evaluate\.lr' in .*params\.yaml"):
        load(tmp_path, changed(repo_params, "evaluate.lr", delete=True))
    with pytest.raises(PipelineError, match=r"missing param 'annotate\.ray\.gpus_per_actor'"):
        load(tmp_path, changed(repo_params, "annotate.ray.gpus_per_actor", delete=True))


def test_nan_in_yaml_is_named(tmp_path, repo_params):
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(changed(repo_params, "align.lr", math.nan), sort_keys=False))
    assert "lr: .nan" in path.read_text()
    with pytest.raises(PipelineError, match=r"param 'align\.lr' must be a finite number, got nan"):
        load_params(path)


@pytest.mark.parametrize("key, value, message", [
    ("evaluate.lr", 0, r"param 'evaluate\.lr' must be > 0, got 0"),
    ("evaluate.lr", -0.01, r"param 'evaluate\.lr' must be > 0, got -0\.01"),
    ("evaluate.lr", math.inf, r"param 'evaluate\.lr' must be a finite number, got inf"),
    ("evaluate.repeats", 0, r"param 'evaluate\.repeats' must be >= 1, got 0"),
    ("evaluate.epochs", -3, r"param 'evaluate\.epochs' must be >= 1, got -3"),
    ("prepare.max_train_per_class", -5, r"param 'prepare\.max_train_per_class' must be >= 0, got -5"),
    ("prepare.test_fraction", 0, r"param 'prepare\.test_fraction' must be > 0 and < 1, got 0"),
    ("prepare.test_fraction", 1.0, r"param 'prepare\.test_fraction' must be > 0 and < 1, got 1\.0"),
    ("select.lof_contamination", 0.7, r"param 'select\.lof_contamination' must be >= 0 and <= 0\.5, got 0\.7"),
    ("ground.min_area", 1.5, r"param 'ground\.min_area' must be >= 0 and <= 1, got 1\.5"),
    ("seed", -1, r"param 'seed' must be >= 0, got -1"),
    ("annotate.ray.gpus_per_actor", -1, r"param 'annotate\.ray\.gpus_per_actor' must be >= 0"),
])
def test_number_out_of_range_is_named(tmp_path, repo_params, key, value, message):
    with pytest.raises(PipelineError, match=message):
        load(tmp_path, changed(repo_params, key, value))


@pytest.mark.parametrize("key, value, message", [
    ("evaluate.epochs", "100", r"param 'evaluate\.epochs' must be int, got str '100'"),
    ("evaluate.epochs", 100.0, r"param 'evaluate\.epochs' must be int, got float 100\.0"),
    ("evaluate.epochs", True, r"param 'evaluate\.epochs' must be int, got bool True"),
    ("evaluate.augment", "yes", r"param 'evaluate\.augment' must be bool, got str 'yes'"),
    ("prepare.test_fraction", None, r"param 'prepare\.test_fraction' must be float, got NoneType None"),
    ("tag.backend", 3, r"param 'tag\.backend' must be str, got int 3"),
    ("evaluate.nets", "convnet3", r"param 'evaluate\.nets' must be list, got str 'convnet3'"),
    ("tag", [1], r"param 'tag' must be a mapping of keys, got \[1\]"),
    ("tag.plugin.kwargs", "a=1", r"param 'tag\.plugin\.kwargs' must be a mapping"),
])
def test_wrong_type_is_named(tmp_path, repo_params, key, value, message):
    with pytest.raises(PipelineError, match=message):
        load(tmp_path, changed(repo_params, key, value))


@pytest.mark.parametrize("key, value, message", [
    ("device", "gpu", r"param 'device' = 'gpu' is not one of: auto, cpu, cuda"),
    ("prepare.dataset", "fashion-mnist", r"'prepare\.dataset' = 'fashion-mnist' is not one of: fashion_mnist, .*"
                                         r"did you mean 'fashion_mnist'\?"),
    ("prepare.channels", 4, r"param 'prepare\.channels' = 4 is not one of: 0, 1, 3"),
    ("ground.backend", "grounding_dino", r"'ground\.backend' = 'grounding_dino' is not one of: "
                                         r"grounding_dino_sam, offline_threshold; did you mean 'grounding_dino_sam'"),
    ("annotate.on_error", "ignore", r"param 'annotate\.on_error' = 'ignore' is not one of: fail, skip"),
    ("select.pair_coresets.methods", ["random", "kmeans"],
     r"param 'select\.pair_coresets\.methods\[1\]' = 'kmeans' is not one of: forgetting, herding, kcenter, random"),
    ("pretrain.net", "convnet3:group", r"param 'pretrain\.net' = 'convnet3:group' is not one of: convnet, convnet3, "
                                      r".*optionally :norm"),
    ("evaluate.nets", [], r"param 'evaluate\.nets' needs at least 1 item"),
    ("evaluate.nets", ["convnet3", "convnet3"], r"param 'evaluate\.nets' has a repeated item"),
    ("select.pds.clusters", [5, 0], r"param 'select\.pds\.clusters\[1\]' must be >= 1, got 0"),
    ("tag.clip.prompt", "", r"param 'tag\.clip\.prompt' must not be empty"),
    ("annotate.cache_dir", "  ", r"param 'annotate\.cache_dir' must not be empty"),
])
def test_bad_name_list_or_empty_string_is_named(tmp_path, repo_params, key, value, message):
    with pytest.raises(PipelineError, match=message):
        load(tmp_path, changed(repo_params, key, value))


def test_registered_names_and_normalised_nets_are_valid(tmp_path, repo_params):
    params = changed(repo_params, "evaluate.nets", ["convnet3", "resnet18:instance", "vit"])
    params = changed(params, "tag.backend", "plugin")
    params = changed(params, "embed.image_encoder", "open_clip")
    params = changed(params, "annotate.ray.cpus_per_actor", 0.5)  # int or float
    assert load(tmp_path, params)["evaluate"]["nets"][1] == "resnet18:instance"


def test_invalid_yaml_names_the_line(tmp_path):
    lines = (REPO / "params.yaml").read_text().splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith("  repeats:"))
    lines[at] = "  repeats: 3: 4"
    path = tmp_path / "params.yaml"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(PipelineError, match=rf"params\.yaml:{at + 1}: invalid YAML \(mapping values are not allowed"):
        load_params(path)


def test_duplicate_key_names_the_line(tmp_path):
    """Plain YAML keeps the last of two equal keys without a word; here it is an error naming the second."""
    lines = (REPO / "params.yaml").read_text().splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith("  repeats:")) + 1
    lines.insert(at, "  repeats: 5")
    path = tmp_path / "params.yaml"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(PipelineError, match=rf"params\.yaml:{at + 1}: invalid YAML \(duplicate key 'repeats'\)"):
        load_params(path)


def test_param_lookup_checks_like_the_schema():
    params = {"a": {"lr": math.nan, "n": 3, "name": "x"}}
    assert param(params, "a.n", float) == 3
    with pytest.raises(PipelineError, match=r"'a\.lr' must be a finite number"):
        param(params, "a.lr", float)
    with pytest.raises(PipelineError, match=r"'a\.name' = 'x' is not one of: y, z"):
        param(params, "a.name", str, choices=("y", "z"))
    with pytest.raises(PipelineError, match=r"missing param 'a\.m'"):
        param(params, "a.m", int)


def code_reads():
    """(file, line, key, passes a default) of every param/positive/int_list call with a literal key in src/."""
    for path in sorted(SRC.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) in ("param", "positive", "int_list"):
                key = node.args[1] if len(node.args) > 1 else None
                if isinstance(key, ast.Constant) and isinstance(key.value, str):
                    default = len(node.args) > 3 or any(k.arg == "default" for k in node.keywords)
                    yield path.relative_to(SRC), node.lineno, key.value, default


def test_every_key_the_code_reads_is_in_params_yaml(repo_params):
    missing = []
    for path, line, key, _ in code_reads():
        node = repo_params
        for part in key.split("."):
            if not isinstance(node, dict) or part not in node:
                missing.append(f"{path}:{line}: {key}")
                break
            node = node[part]
    assert not missing


def test_no_code_default_outside_the_distill_package():
    """Every default lives in params.yaml. (src/mmdistill/distill/ is being moved to its method registry.)"""
    defaults = [f"{path}:{line}: {key}" for path, line, key, default in code_reads()
                if default and path.parts[0] != "distill"]
    assert not defaults


def snapshot(root: Path) -> dict:
    return {p.relative_to(root): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and "__pycache__" not in p.parts}


def rewrite(path: Path, **updates) -> None:
    params = yaml.safe_load(path.read_text())
    for key, change in updates.items():
        params = changed(params, key.replace("__", "."), **change)
    path.write_text(yaml.safe_dump(params, sort_keys=False))


BREAKAGES = [
    (lambda path: rewrite(path, prepare__max_train_per_class={"rename": "max_train_per_clas"}),
     "error: unknown param 'prepare.max_train_per_clas' in params.yaml; did you mean 'prepare.max_train_per_class'?"),
    (lambda path: rewrite(path, evaluate__lr={"value": 0}), "error: param 'evaluate.lr' must be > 0, got 0"),
    (lambda path: path.write_text(path.read_text().replace("seed: 0\n", "seed: [0\n", 1)), "error: params.yaml:"),
]


@pytest.mark.slow  # a stage subprocess per breakage
def test_stage_with_bad_params_exits_with_one_line_and_writes_nothing(tmp_path, fashion_dir):
    """python -m mmdistill.stages.prepare, after one good run: bad params stop it before it touches anything."""
    root = make_project(tmp_path / "project", fashion_dir)
    env = dict(os.environ, PYTHONPATH=str(root / "src"), PYTHONDONTWRITEBYTECODE="1")
    env.pop("MMDISTILL_DEBUG", None)
    command = [sys.executable, "-m", "mmdistill.stages.prepare"]
    first = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True)
    assert first.returncode == 0, first.stderr
    assert list((root / "data/prepared").glob("train-*.parquet"))
    good = (root / "params.yaml").read_text()
    for breakage, message in BREAKAGES:
        (root / "params.yaml").write_text(good)
        breakage(root / "params.yaml")
        before = snapshot(root)
        result = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True)
        assert result.returncode == 1 and result.stdout == ""
        assert len(result.stderr.strip().splitlines()) == 1 and result.stderr.startswith(message), result.stderr
        assert snapshot(root) == before


def test_misspelt_override_in_a_method_block_names_the_family_key(tmp_path, repo_params):
    """`distill.dm` holds only dm's differences from `distill.distribution`; a misspelt override there is named with
    the family key it meant."""
    params = copy.deepcopy(repo_params)
    params["distill"]["dm"]["iteratons"] = 5
    with pytest.raises(PipelineError, match=r"unknown param 'distill\.dm\.iteratons'.*did you mean "
                                            r"'distill\.dm\.iterations'"):
        load(tmp_path, params)

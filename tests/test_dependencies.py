"""dvc.yaml's deps are complete by construction: every stage lists its whole import closure, and stages that no
enabled method needs do not exist on the default params."""
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from ruamel.yaml import YAML

from mmdistill.devtools import code_deps
from mmdistill.devtools.closure import closure, command_module
from mmdistill.devtools.pipeline import committed_outputs, resolved_stages

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def uncovered(root: Path) -> dict[str, list[str]]:
    """Stage -> the project modules its command imports that its deps do not list."""
    missing = {}
    for stage in resolved_stages(root):
        module = command_module(stage.cmd)
        if module is None:
            continue
        deps = {str(d.def_path) for d in stage.deps}
        lost = [path for path in closure(module, root / "src") if path not in deps]
        if lost:
            missing[stage.name] = lost
    return missing


def dvc_project(tmp_path: Path) -> Path:
    root = tmp_path / "project"
    root.mkdir()
    shutil.copytree(REPO / "src", root / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ("dvc.yaml", "params.yaml", "tag_vocabulary.txt"):
        shutil.copy(REPO / name, root / name)
    subprocess.run([BIN / "dvc", "init", "--no-scm", "-q"], cwd=root, check=True)
    return root


def test_every_stage_lists_its_import_closure():
    assert uncovered(REPO) == {}


def test_code_deps_are_up_to_date():
    yaml = YAML()
    assert code_deps.updated(yaml.load(REPO / "dvc.yaml"), REPO / "src") == []


def test_closure_check_fails_when_a_dep_is_removed(tmp_path):
    root = dvc_project(tmp_path)
    text = (root / "dvc.yaml").read_text()
    start = text.index("  prepare:\n")
    cut = text.index("      - src/mmdistill/core/storage.py\n", start)
    (root / "dvc.yaml").write_text(text[:cut] + text[cut + len("      - src/mmdistill/core/storage.py\n"):])
    assert uncovered(root) == {"prepare": ["src/mmdistill/core/storage.py"]}


def test_closure_follows_imports_inside_functions_and_registry_strings(tmp_path):
    src = tmp_path / "src"
    (src / "mmdistill" / "a").mkdir(parents=True)
    (src / "mmdistill" / "__init__.py").write_text("")
    (src / "mmdistill" / "a" / "__init__.py").write_text("X = 1\n")
    (src / "mmdistill" / "a" / "entry.py").write_text("def f():\n    from mmdistill.a import lazy\n"
                                                      "REGISTRY = 'mmdistill.a.named:Thing'\n")
    (src / "mmdistill" / "a" / "lazy.py").write_text("import os\n")
    (src / "mmdistill" / "a" / "named.py").write_text("Thing = 1\n")
    (src / "mmdistill" / "a" / "unused.py").write_text("Y = 2\n")
    assert closure("mmdistill.a.entry", src) == ["src/mmdistill/a/__init__.py", "src/mmdistill/a/entry.py",
                                                 "src/mmdistill/a/lazy.py", "src/mmdistill/a/named.py"]


def test_the_params_schema_is_no_code_dep_because_it_only_validates(tmp_path):
    """A stage does not re-run when the schema gains a param: the schema is left out of every closure, which is
    sound only while loading params returns them exactly as params.yaml has them (validation, no defaults)."""
    import yaml

    from mmdistill.core.config import load_params
    assert "src/mmdistill/core/schema.py" not in closure("mmdistill.stages.distill", REPO / "src")
    assert "src/mmdistill/core/config.py" in closure("mmdistill.stages.distill", REPO / "src")
    assert load_params(REPO / "params.yaml") == yaml.safe_load((REPO / "params.yaml").read_text())


def test_no_stage_module_imports_another_stage_module():
    for path in sorted((REPO / "src/mmdistill/stages").glob("*.py")):
        if path.name == "__init__.py":
            continue
        others = [p for p in closure(f"mmdistill.stages.{path.stem}", REPO / "src")
                  if p.startswith("src/mmdistill/stages/") and p not in (f"src/mmdistill/stages/{path.name}",
                                                                         "src/mmdistill/stages/__init__.py")]
        assert others == [], f"{path.name} imports {others}"


def test_library_never_imports_stages():
    for path in sorted((REPO / "src/mmdistill").rglob("*.py")):
        if "stages" in path.parts or "devtools" in path.parts:
            continue
        module = ".".join(path.relative_to(REPO / "src").with_suffix("").parts).removesuffix(".__init__")
        assert not [p for p in closure(module, REPO / "src") if p.startswith("src/mmdistill/stages/")], module


def test_default_run_has_no_stage_whose_output_nobody_reads():
    """Every stage of the default pipeline with cached data outputs has one that another stage reads (metrics,
    figures and the report are the products and are not cached)."""
    stages = resolved_stages(REPO)
    deps = {str(d.def_path) for s in stages for d in s.deps}

    def read(path):
        return any(d == path or d.startswith(path + "/") or path.startswith(d + "/") for d in deps)
    unread = [stage.name for stage in stages
              if (cached := [str(o.def_path) for o in stage.outs if o.use_cache and not o.persist])
              and not any(read(path) for path in cached)]
    assert unread == []
    names = {s.name.split("@")[0] for s in stages}
    assert not names & {"pretrain", "vae", "caption_head", "annotate_test", "align", "prototypes",
                        "finetune_diffusion"}


def test_uncached_outputs_are_in_git():
    """An output with `cache: false` reaches a colleague only through git: were it ignored, their pulled clone would
    lack it and `dvc status` would call the stage changed."""
    uncached = committed_outputs(REPO)
    assert uncached
    ignored = subprocess.run(["git", "check-ignore", "--no-index", *uncached], cwd=REPO, capture_output=True,
                             text=True).stdout.split()
    assert ignored == []


@pytest.mark.parametrize("group, stage", [("pool", "pretrain@dsdm"), ("caption_match", "caption_head@caption_match"),
                                          ("caption_concat", "annotate_test@caption_concat"),
                                          ("synthesis", "finetune_diffusion@vlcp")])
def test_enabling_a_method_adds_the_stage_it_needs(tmp_path, group, stage):
    root = dvc_project(tmp_path)
    yaml = YAML()
    params = yaml.load(root / "params.yaml")
    params["distill"]["methods"][group] = [stage.split("@")[1]]
    yaml.dump(params, root / "params.yaml")
    assert stage in {s.name for s in resolved_stages(root)}

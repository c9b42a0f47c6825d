"""report: the method x IPC x architecture table and the published numbers beside ours."""
import json

import pytest

from mmdistill.report.markdown import accuracy_by_ipc, published, table

FMNIST = {"name": "fashion_mnist", "height": 28}


def run(method, ipc, nets, base=50.0):
    """(evaluation record, metrics) of one evaluate run, in the layout of outputs/evaluate and outputs/metrics."""
    metrics = {n: {"test_accuracy_mean": base + i, "test_accuracy_std": 0.5, "val_accuracy_mean": base,
                   "val_accuracy_std": 0.1} for i, n in enumerate(nets)}
    return {"method": method, "ipc": ipc, "net": nets[0], "nets": nets}, metrics


def test_published_numbers_only_where_a_row_exists():
    assert published(FMNIST, "convnet3", "dm", 10) == 83.5
    assert published(FMNIST, "convnet3", "dsdm", 1) == 80.8 and published(FMNIST, "convnet3", "random", 50) == 82.5
    assert published(FMNIST, "convnet3", "full", None) == 93.5
    assert published(FMNIST, "resnet18", "dm", 10) is None          # the table is ConvNet-3 only
    assert published(FMNIST, "convnet3", "dm", 2) is None           # no such IPC in the paper
    assert published(FMNIST, "convnet3", "caption_match", 1) is None
    assert published({"name": "fashion_mnist", "height": 32}, "convnet3", "dm", 10) is None
    assert published({"name": "imagenette", "height": 128}, "convnet", "dm", 1) == 30.4
    assert published({"name": "my_folder", "height": 32}, "convnet3", "dm", 1) is None


def test_table_has_every_method_and_architecture_even_unknown_ones():
    rows = [("dm", "10", *run("dm", 10, ["convnet3", "vit"], 80.0)),
            ("brand_new", "10", *run("brand_new", 10, ["convnet3"], 60.0)),
            ("whole train split (100 images)", "—", *run("full", None, ["convnet3", "vit"], 90.0))]
    lines = table(rows, FMNIST)
    assert lines[0] == "| method | IPC | accuracy (%) | val accuracy (%) | vit (%) | published, convnet3 (%) |"
    assert lines[2] == "| dm | 10 | 80.00 ± 0.50 | 80.00 | 81.00 ± 0.50 | 83.5 |"
    assert lines[3] == "| brand_new | 10 | 60.00 ± 0.50 | 60.00 | — | — |"
    assert lines[4] == "| whole train split (100 images) | — | 90.00 ± 0.50 | 90.00 | 91.00 ± 0.50 | 93.5 |"
    assert all(line.count("|") == lines[0].count("|") for line in lines)


def test_accuracy_by_ipc_has_a_series_per_method_by_ascending_ipc():
    runs = [(r[0]["method"], *r) for r in (run("dm", 10, ["convnet3", "vit"], 80.0), run("dm", 1, ["convnet3"], 60.0),
                                           run("random", 1, ["vit"], 40.0))]
    assert accuracy_by_ipc(runs) == {"dm": [{"ipc": 1, "test_accuracy": 60.0}, {"ipc": 10, "test_accuracy": 80.0}],
                                     "random": [{"ipc": 1, "test_accuracy": 40.0}]}


def test_report_stage_with_latent_runs_other_nets_and_the_full_row(project):
    from mmdistill.core.storage import write_parquet
    from tests.conftest import run_stage, set_params
    run_stage("prepare")
    for name in ("tags", "instances", "captions", "descriptions"):
        write_parquet({"uid": ["a"]}, f"data/annotations/{name}.parquet", {"annotation": {"backend": f"fake_{name}"}})
    for kind in ("image", "caption"):
        write_parquet({"uid": ["a"]}, f"data/features/{kind}/index.parquet", {"features": {"encoder": "fake"}})
    set_params(project, **{"distill.methods.selection": [], "distill.methods.masked": [],
                           "distill.methods.gradient": ["dc"], "distill.methods.latent": ["dm"], "distill.ipcs": [1]})
    set_params(project, **{"distill.dc.iterations": 7, "evaluate.lr": 0.01, "evaluate.augment": True,
                           "evaluate_full.epochs": 2, "evaluate_full.repeats": 2, "evaluate_full.augment": True})
    for name, (record, metrics) in (("dm-ipc1", run("dm", 1, ["convnet3", "vgg11"], 70.0)),
                                    ("dc-ipc1", run("dc", 1, ["convnet3", "vgg11"], 60.0)),
                                    ("dm-latent-ipc1", run("dm", 1, ["convnet3", "vgg11"], 65.0)),
                                    ("full", run("full", None, ["convnet3", "vgg11"], 85.0))):
        save_current_run(name, record, metrics)
    run_stage("report")
    text = (project / "outputs/report.md").read_text()
    assert "| dm | 1 | 70.00 ± 0.50 | 70.00 | 71.00 ± 0.50 | 70.7 |" in text
    assert "| dc | 1 | 60.00 ± 0.50 | 60.00 | 61.00 ± 0.50 | 70.5 |" in text
    assert "| dm-latent | 1 | 65.00 ± 0.50 | 65.00 | 66.00 ± 0.50 | — |" in text
    assert "(figures/distilled/dm-latent-ipc1.png)" in text
    assert "| whole train split (100 images) | — | 85.00 ± 0.50 | 85.00 | 86.00 ± 0.50 | 93.5 |" in text
    assert "DSDM paper" in text and "fake_captions" in text
    assert "iterations 7" in next(line for line in text.splitlines() if line.startswith("- dc: "))
    assert "- evaluate: 2 epochs (paper: 1000), lr 0.01 (x0.1 at half)" in text and "2 repeats" in text
    assert "- whole train split: 2 epochs, 2 repeat(s)" in text
    assert {p.name: json.loads(p.read_text()) for p in (project / "outputs/plots/accuracy").iterdir()} == {
        "dm.json": [{"ipc": 1, "test_accuracy": 70.0}], "dc.json": [{"ipc": 1, "test_accuracy": 60.0}],
        "dm-latent.json": [{"ipc": 1, "test_accuracy": 65.0}]}


def current_record(record: dict, name: str) -> dict:
    """An evaluation record made with the project's params.yaml as it is now (settings and budget)."""
    from mmdistill.core.config import load_params
    from mmdistill.data.datasets import dataset_info, resolve_flip
    from mmdistill.distill.runs import recorded_settings
    params, info = load_params(), dataset_info()
    section = "evaluate_full" if name == "full" else "evaluate"
    settings = {} if name == "full" else json.loads(json.dumps(recorded_settings(params, record["method"], info)))
    flip = params[section]["augment"] and resolve_flip(params["evaluate"]["flip"], "evaluate.flip", info)
    return {**record, "epochs": params[section]["epochs"], "repeats": params[section]["repeats"],
            "augment": params[section]["augment"], "lr": params["evaluate"]["lr"],
            "batch_size": params["evaluate"]["batch_size"], "seed": params["seed"], "train_images": 100,
            "precision": params["evaluate"]["precision"], "compile": params["evaluate"]["compile"] or None,
            "flip": flip, "distill": settings, "dsa": dict(params["dsa"]) if params[section]["augment"] else None}


def save_current_run(name: str, record: dict, metrics: dict) -> None:
    """Run `name`'s metrics file and its evaluation record made with the current params."""
    from mmdistill.core.storage import save_json
    save_json(metrics, f"outputs/metrics/{name}.json")
    save_json(current_record(record, name), f"outputs/evaluate/{name}.json")


@pytest.fixture
def reported(project):
    return make_reported(project)


def make_reported(project):
    """A prepared project whose params enable dm and random at IPC 1, with current evaluation records."""
    from mmdistill.core.storage import write_parquet
    from tests.conftest import run_stage, set_params
    run_stage("prepare")
    for name in ("tags", "instances", "captions", "descriptions"):
        write_parquet({"uid": ["a"]}, f"data/annotations/{name}.parquet", {"annotation": {"backend": "fake"}})
    for kind in ("image", "caption"):
        write_parquet({"uid": ["a"]}, f"data/features/{kind}/index.parquet", {"features": {"encoder": "fake"}})
    set_params(project, **{"distill.methods.selection": ["random"], "distill.methods.masked": [],
                           "distill.methods.distribution": ["dm"], "distill.ipcs": [1]})
    for name, (record, metrics) in (("dm-ipc1", run("dm", 1, ["convnet3"], 70.0)),
                                    ("random-ipc1", run("random", 1, ["convnet3"], 60.0))):
        save_current_run(name, record, metrics)
    return project


@pytest.mark.parametrize("key, value, message", [
    ("distill.dm.lr", 3.0, r"dm-ipc1\.json \(run dm-ipc1\) was made with distill\.lr = [\d.e-]+, "
                           r"params\.yaml has 3\.0"),
    ("distill.distribution.iterations", 9, r"run dm-ipc1\) was made with distill\.iterations = \d+, "
                                           r"params\.yaml has 9"),
    ("evaluate.epochs", 7, r"run (dm|random)-ipc1\) was made with epochs = \d+, params\.yaml has 7"),
    ("seed", 5, r"was made with seed = 0, params\.yaml has 5"),
    ("evaluate.precision", "fp32", r"run (dm|random)-ipc1\) was made with precision = 'bf16', params\.yaml has 'fp32'"),
    ("evaluate.compile", "eager", r"run (dm|random)-ipc1\) was made with compile = None, params\.yaml has 'eager'"),
    ("evaluate.flip", True, r"run (dm|random)-ipc1\) was made with flip = False, params\.yaml has True"),
    ("distill.distribution.flip", True, r"run dm-ipc1\) was made with distill\.flip = False, params\.yaml has True"),
])
def test_report_refuses_records_made_with_other_settings(reported, key, value, message):
    """issue 14 item 19: a report run by hand after params changed (without `dvc repro`) refuses the stale records,
    naming the run and the setting, and writes nothing."""
    from mmdistill.core.storage import PipelineError
    from tests.conftest import run_stage, set_params, snapshot
    run_stage("report")  # current records: a report
    before = snapshot(reported)
    set_params(reported, **{key: value})
    with pytest.raises(PipelineError, match=message):
        run_stage("report")
    assert snapshot(reported) == before


def test_report_rows_name_the_form_that_ran(reported):
    """issue 14 Must show: the paper-form rows beside the earlier forms, each row saying which form ran (the
    settings that choose it follow the method's name); a flip left `auto` is checked as the dataset's default."""
    from tests.conftest import run_stage, set_params
    set_params(reported, **{"distill.methods.selection": ["random", "forgetting", "forgetting_most"],
                            "distill.methods.masked": ["masked_dm", "masked_dm_means"]})
    for method, accuracy in (("forgetting", 61.0), ("forgetting_most", 31.0), ("masked_dm", 71.0),
                             ("masked_dm_means", 72.0)):
        save_current_run(f"{method}-ipc1", *run(method, 1, ["convnet3"], accuracy))
    run_stage("report")
    text = (reported / "outputs/report.md").read_text()
    assert "| forgetting (forgetting_order fewest) | 1 | 61.00 ± 0.50 |" in text
    assert "| forgetting_most (forgetting_order most) | 1 | 31.00 ± 0.50 |" in text
    assert "| masked_dm (full_term dc, masked_term pairs) | 1 | 71.00 ± 0.50 |" in text
    assert "| masked_dm_means (full_term dm, masked_term class_means) | 1 | 72.00 ± 0.50 |" in text
    assert "| dm | 1 | 70.00 ± 0.50 |" in text and "| random | 1 | 60.00 ± 0.50 |" in text  # no form to name
    assert {p.name for p in (reported / "outputs/plots/accuracy").iterdir()} == {
        f"{m}.json" for m in ("random", "forgetting", "forgetting_most", "dm", "masked_dm", "masked_dm_means")}


def test_report_removes_the_outputs_of_runs_no_longer_enabled(reported):
    """issue 14 item 19: runs whose stages left dvc.yaml (method dropped from distill.methods, IPC dropped from
    distill.ipcs) lose their metrics, records, figures, loss curves and logs; the others stay."""
    from mmdistill.core.storage import save_json
    from tests.conftest import run_stage
    stale = ("dc-ipc1", "dm-ipc2", "dm-latent-ipc1")
    for name in stale + ("dm-ipc1", "random-ipc1"):
        if name not in ("dm-ipc1", "random-ipc1"):
            save_json({"convnet3": {}}, f"outputs/metrics/{name}.json")
            save_json({}, f"outputs/evaluate/{name}.json")
        for path in (f"outputs/figures/distilled/{name}.png", f"outputs/plots/loss/{name}.tsv",
                     f"outputs/distill/{name}/metrics.json"):
            (reported / path).parent.mkdir(parents=True, exist_ok=True)
            (reported / path).write_text("x")
    for other in ("outputs/metrics/align.json", "outputs/metrics/vae/dm.json", "outputs/evaluate/notes.json"):
        (reported / other).parent.mkdir(parents=True, exist_ok=True)
        (reported / other).write_text("{}")
    run_stage("report")
    left = {str(p.relative_to(reported)) for p in (reported / "outputs").rglob("*") if p.is_file()}
    assert not [p for p in left if any(name in p for name in stale)]
    assert {"outputs/metrics/dm-ipc1.json", "outputs/evaluate/random-ipc1.json",
            "outputs/figures/distilled/dm-ipc1.png",
            "outputs/plots/loss/dm-ipc1.tsv", "outputs/distill/random-ipc1/metrics.json", "outputs/metrics/align.json",
            "outputs/metrics/vae/dm.json", "outputs/evaluate/notes.json", "outputs/report.md"} <= left


def test_report_names_a_missing_evaluation_record(project):
    from mmdistill.core.storage import PipelineError, save_json
    from tests.conftest import run_stage, set_params
    set_params(project, **{"distill.methods.selection": [], "distill.methods.masked": [], "distill.ipcs": [1]})
    save_json(run("dm", 1, ["convnet3"])[1], "outputs/metrics/dm-ipc1.json")
    with pytest.raises(PipelineError, match="outputs/evaluate/dm-ipc1.json is missing"):
        run_stage("report")


def test_a_paper_form_switched_off_is_named_in_the_row():
    from mmdistill.stages.report import form_label
    assert form_label("dm", {"siamese": False, "lr": 1.0}) == "dm (siamese off)"
    assert form_label("dm", {"siamese": True, "lr": 1.0}) == "dm"
    assert form_label("masked_dm_means", {"full_term": "dm", "siamese": False}) == "masked_dm_means (full_term dm, siamese off)"


def test_report_shows_the_listed_benchmark_results_and_names_a_missing_one(reported):
    """report.benchmarks: generated benchmark results in their own section, each row with its variant and the
    default net's accuracy read from the result file; a listed result that does not exist is a one-line error."""
    import json

    from mmdistill.core.storage import PipelineError
    from tests.conftest import run_stage, set_params
    result = json.loads((reported / "benchmarks/results/dm_same_budget.json").read_text())
    evaluated = [s for s in result["steps"] if s["step"] == "evaluate"]
    set_params(reported, **{"report.benchmarks": ["dm_same_budget"]})
    run_stage("report")
    text = (reported / "outputs/report.md").read_text()
    assert "## Benchmark runs" in text and result["config"]["description"] in text
    for step in evaluated:
        m = step["metrics"]["convnet3"]
        assert (f"| {step['variant']} | {step['method']} | {step['ipc']} | "
                f"{m['test_accuracy_mean']:.2f} ± {m['test_accuracy_std']:.2f} |") in text
    before = (reported / "outputs/report.md").read_bytes()
    set_params(reported, **{"report.benchmarks": ["no_such_run"]})
    with pytest.raises(PipelineError, match=r"report\.benchmarks.*benchmarks/results/no_such_run\.json"):
        run_stage("report")
    assert (reported / "outputs/report.md").read_bytes() == before


# ---- image-text retrieval ------------------------------------------------------------------------------------

def retrieval_run(name: str, base: float, images: int, params: dict | None = None) -> tuple[dict, dict]:
    """(record, metrics) of one evaluate_retrieval run, in the layout the stage writes (fabricated numbers)."""
    keys = [f"{s}_r{k}" for s in ("tr", "ir") for k in (1, 5, 10)]
    metrics = {"convnet3": {f"{split}_{k}_{stat}": (base + i if stat == "mean" else 0.5)
                            for split in ("test", "val") for i, k in enumerate(keys) for stat in ("mean", "std")}}
    imagetext = (params or {}).get("imagetext", {})
    record = {"pairs": name, "train_images": images, "train_texts": images * 5, "dataset": "scenes",
              "chance": {"test": {k: 0.25 for k in keys}, "val": {k: 0.5 for k in keys}},
              "model": imagetext.get("model", {"image_encoder": "convnet3"}),
              "evaluate": imagetext.get("evaluate", {"repeats": 3, "epochs": 30, "lr": 0.1}),
              "seed": (params or {}).get("seed", 0)}
    return record, metrics


def test_retrieval_table_rows_bounds_and_published_numbers():
    from mmdistill.report.markdown import retrieval_table
    runs = [("random-100", *retrieval_run("random-100", 2.0, 100)), ("mttvl-100", *retrieval_run("mttvl-100", 3.0, 100)),
            ("full", *retrieval_run("full", 40.0, 5000)), ("herding-100", *retrieval_run("herding-100", 1.0, 100))]
    lines = retrieval_table(runs)
    assert lines[0] == ("| method | pairs | TR R@1 (%) | TR R@5 (%) | TR R@10 (%) | IR R@1 (%) | IR R@5 (%) | "
                        "IR R@10 (%) |")
    assert lines[2] == ("| whole train split, upper bound (5000 images) | — | 40.00 ± 0.50 | 41.00 ± 0.50 | 42.00 ± 0.50 | "
                        "43.00 ± 0.50 | 44.00 ± 0.50 | 45.00 ± 0.50 |")
    assert [line.split(" | ")[0] for line in lines[3:6]] == ["| mttvl", "| random", "| herding"]
    assert lines[6] == "| random ranking, lower bound | — | 0.25 | 0.25 | 0.25 | 0.25 | 0.25 | 0.25 |"
    assert all(line.count("|") == lines[0].count("|") for line in lines[:7])
    assert "different data and budget" in lines[8]
    assert "| mttvl (published) | 100 | 9.9 ± 0.3 | 4.7 ± 0.2 |" in lines
    assert "| random (published) | 100 | 1.3 | 1.0 |" in lines
    without_full = retrieval_table(runs[:2])
    assert "| whole train split, upper bound | — | not run |" in "\n".join(without_full)


def test_label_caption_table_beside_mtt_vl_table_7():
    """mttvl-N at N / classes images per class and the whole train split beside Table 7's CIFAR-10 rows of that
    size; published sizes we did not run and our sizes with no published row both show; coresets are not Table 7."""
    from mmdistill.report.markdown import label_caption_table
    runs = [("full", *retrieval_run("full", 80.0, 2000)), ("mttvl-100", *retrieval_run("mttvl-100", 30.0, 100)),
            ("mttvl-20", *retrieval_run("mttvl-20", 20.0, 20)), ("herding-100", *retrieval_run("herding-100", 5.0, 100)),
            ("mttvl-15", *retrieval_run("mttvl-15", 9.0, 15))]
    lines = label_caption_table(runs, classes=10, captions=1)
    assert "TR R@1 (%), single caption |" in lines[0] and all(line.count("|") == 7 for line in lines[:7])
    assert lines[2:8] == [
        "| 1 | not run | — | 27.4 ± 1.0 | 22.3 ± 1.0 | 46.3 ± 0.8 |",
        "| 2 | mttvl-20 | 20.00 ± 0.50 | — | — | — |",
        "| 10 | mttvl-100 | 30.00 ± 0.50 | 35.9 ± 0.7 | 33.2 ± 0.5 | 65.3 ± 0.7 |",
        "| 50 | not run | — | 66.8 ± 1.1 | 62.0 ± 0.8 | 71.6 ± 0.2 |",
        "| whole train split | full | 80.00 ± 0.50 | 79.6 ± 0.6 | 80.3 ± 0.4 | 84.8 ± 0.1 |", ""]
    assert "CIFAR-10" in lines[-1] and "a different dataset" in lines[-1]
    assert "5 captions |" in label_caption_table(runs, classes=10, captions=5)[0]


@pytest.mark.slow  # prepare of fashion_mnist_captions and the whole report (~9 s on shared cores)
def test_report_stage_puts_label_captions_beside_table_7(project):
    """On fashion_mnist_captions the retrieval section gains the Table 7 comparison; on other data it does not."""
    from mmdistill.core.config import load_params
    from mmdistill.core.storage import save_json
    from tests.conftest import run_stage, set_params
    set_params(project, **{"prepare.dataset": "fashion_mnist_captions", "prepare.fashion_mnist_captions.captions": 1})
    make_reported(project)
    set_params(project, **{"imagetext.stages": ["on"], "imagetext.pair_sets": ["full"],
                           "imagetext.distill_sets": ["mttvl-10"]})
    params = load_params()
    for name, base, images in (("full", 80.0, 120), ("mttvl-10", 30.0, 10)):
        record, metrics = retrieval_run(name, base, images, params)
        record["dataset"] = "fashion_mnist_captions"
        save_json(metrics, f"outputs/metrics/retrieval-{name}.json")
        save_json(record, f"outputs/evaluate/retrieval-{name}.json")
    run_stage("report")
    text = (project / "outputs/report.md").read_text()
    assert "### Label captions beside MTT-VL Table 7 (CIFAR-10)" in text and "(1 per image)" in text
    assert "| 1 | mttvl-10 | 30.00 ± 0.50 | 27.4 ± 1.0 | 22.3 ± 1.0 | 46.3 ± 0.8 |" in text
    assert "| whole train split | full | 80.00 ± 0.50 | 79.6 ± 0.6 |" in text


def test_report_stage_shows_retrieval_when_imagetext_runs_exist(reported):
    from mmdistill.core.config import load_params
    from mmdistill.core.storage import PipelineError, save_json
    from tests.conftest import run_stage, set_params
    run_stage("report")
    assert "Image–text retrieval" not in (reported / "outputs/report.md").read_text()   # none listed: no section
    set_params(reported, **{"imagetext.stages": ["on"], "imagetext.pair_sets": ["full", "random-4"],
                            "imagetext.distill_sets": ["mttvl-4"], "imagetext.coreset_sets": ["kcenter-4"]})
    with pytest.raises(PipelineError, match=r"retrieval-full.json is missing: run `dvc repro evaluate_retrieval@full`"):
        run_stage("report")
    params = load_params()
    for name, base, images in (("full", 30.0, 500), ("random-4", 1.0, 4), ("mttvl-4", 2.0, 4), ("kcenter-4", 1.5, 4)):
        record, metrics = retrieval_run(name, base, images, params)
        save_json(metrics, f"outputs/metrics/retrieval-{name}.json")
        save_json(record, f"outputs/evaluate/retrieval-{name}.json")
    run_stage("report")
    text = (reported / "outputs/report.md").read_text()
    assert "## Image–text retrieval" in text and "| random | 4 | 1.00 ± 0.50 |" in text
    assert "| kcenter | 4 | 1.50 ± 0.50 |" in text and "| whole train split, upper bound (500 images) |" in text
    assert "| random ranking, lower bound |" in text and "| mttvl (published) | 100 | 9.9 ± 0.3 |" in text
    assert "| dm | 1 | 70.00 ± 0.50 |" in text                                          # the accuracy table stays
    set_params(reported, **{"imagetext.evaluate.epochs": 2})
    with pytest.raises(PipelineError, match=r"run retrieval-full\) was made with evaluate = .*params\.yaml has"):
        run_stage("report")


def test_a_benchmark_with_vlcp_rows_shows_vlcp_published_numbers_labelled_by_dataset():
    from mmdistill.report.markdown import benchmark_table
    m = {"convnet3": {"test_accuracy_mean": 70.0, "test_accuracy_std": 1.0}}
    result = {"status": "complete", "config": {"description": "vlcp test", "kind": "accuracy", "set": {}, "rows": []},
              "stamp": {"commit": "abcdef0123", "finished": "now", "machine": {"cpu": "cpu", "cores": 2, "gpus": []}},
              "steps": [{"step": "evaluate", "variant": "base", "row": f"{method}:10", "method": method, "ipc": 10,
                         "metrics": m} for method in ("random", "kmeans", "vlcp")]}
    text = "\n".join(benchmark_table("vlcp", result))
    assert "| base | vlcp | 10 | 70.00 ± 1.00 |" in text and "VLCP supplement" in text
    assert "| dataset | protocol | IPC | network | random (%) | vlcp (%) |" in text      # kmeans: none published
    assert "| ImageNet-100, 256 px | Minimax evaluation | 10 | ConvNet-6 | 17.0 ± 0.3 | 22.3 ± 0.2 |" in text
    assert "| Tiny-ImageNet, 64 px | RDED evaluation (soft labels) | 50 | ResNet-18 (modified) | — | 55.5 ± 0.6 |" in text
    result["steps"] = result["steps"][:2]
    assert "VLCP" not in "\n".join(benchmark_table("vlcp", result))       # no vlcp row, no published table


def test_a_retrieval_benchmark_shows_every_pair_set_with_recall_and_the_published_rows():
    """report.benchmarks of kind retrieval (e.g. pds-N, pds_unclip-N beside mttvl-N and the coresets on one set):
    variant x pair set with test TR/IR R@1/5/10, ordered as the report's own retrieval table, then MTT-VL's rows."""
    from mmdistill.report.markdown import benchmark_table

    def metrics(r1):
        return {"convnet3": {f"test_{side}_r{k}_{stat}": (r1 * k if stat == "mean" else 0.5)
                             for side in ("tr", "ir") for k in (1, 5, 10) for stat in ("mean", "std")}}
    result = {"status": "complete", "config": {"description": "pairs", "kind": "retrieval", "set": {}, "rows": []},
              "stamp": {"commit": "abcdef0123", "finished": "now", "machine": {"cpu": "cpu", "cores": 2, "gpus": []}},
              "steps": [{"step": "evaluate", "variant": "base", "row": row, "metrics": metrics(r1)}
                        for row, r1 in (("pds_unclip-100", 1.0), ("random-100", 2.0), ("mttvl-100", 3.0))]
              + [{"step": "distill", "variant": "base", "row": "mttvl-100"}]}
    lines = benchmark_table("pairs", result)
    rows = [line for line in lines if line.startswith("| base |")]
    assert rows == ["| base | mttvl-100 | 3.00 ± 0.50 | 15.00 ± 0.50 | 30.00 ± 0.50 | 3.00 ± 0.50 | 15.00 ± 0.50 | "
                    "30.00 ± 0.50 |",
                    "| base | random-100 | 2.00 ± 0.50 | 10.00 ± 0.50 | 20.00 ± 0.50 | 2.00 ± 0.50 | 10.00 ± 0.50 | "
                    "20.00 ± 0.50 |",
                    "| base | pds_unclip-100 | 1.00 ± 0.50 | 5.00 ± 0.50 | 10.00 ± 0.50 | 1.00 ± 0.50 | 5.00 ± 0.50 | "
                    "10.00 ± 0.50 |"]
    assert "| mttvl (published) | 100 | 9.9 ± 0.3 | 4.7 ± 0.2 |" in lines

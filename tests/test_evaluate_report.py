"""report: the method x IPC x architecture table and the published numbers beside ours."""
from mmdistill.report.markdown import published, table

FMNIST = {"name": "fashion_mnist", "height": 28}


def metrics(method, ipc, nets, base=50.0):
    archs = {n: {"test_accuracy_mean": base + i, "test_accuracy_std": 0.5, "val_accuracy_mean": base}
             for i, n in enumerate(nets)}
    return {"method": method, "ipc": ipc, "net": nets[0], "nets": nets, "architectures": archs,
            "val_accuracy_mean": base, **{k: archs[nets[0]][k] for k in ("test_accuracy_mean", "test_accuracy_std")}}


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
    rows = [("dm", "10", metrics("dm", 10, ["convnet3", "vit"], 80.0)),
            ("brand_new", "10", metrics("brand_new", 10, ["convnet3"], 60.0)),
            ("whole train split (100 images)", "—", metrics("full", None, ["convnet3", "vit"], 90.0))]
    lines = table(rows, FMNIST)
    assert lines[0] == "| method | IPC | accuracy (%) | val accuracy (%) | vit (%) | published, convnet3 (%) |"
    assert lines[2] == "| dm | 10 | 80.00 ± 0.50 | 80.00 | 81.00 ± 0.50 | 83.5 |"
    assert lines[3] == "| brand_new | 10 | 60.00 ± 0.50 | 60.00 | — | — |"
    assert lines[4] == "| whole train split (100 images) | — | 90.00 ± 0.50 | 90.00 | 91.00 ± 0.50 | 93.5 |"
    assert all(line.count("|") == lines[0].count("|") for line in lines)


def test_metrics_of_one_architecture_from_before_the_zoo_still_render():
    old = {"method": "dm", "ipc": 1, "net": "convnet3", "test_accuracy_mean": 70.0, "test_accuracy_std": 1.0,
           "val_accuracy_mean": 71.0}
    assert table([("dm", "1", old)], FMNIST)[2] == "| dm | 1 | 70.00 ± 1.00 | 71.00 | 70.7 |"


def test_report_stage_with_latent_runs_other_nets_and_the_full_row(project):
    from mmdistill.core.storage import save_json, write_parquet
    from tests.conftest import run_stage, set_params
    run_stage("prepare")
    for name in ("tags", "instances", "captions", "descriptions"):
        write_parquet({"uid": ["a"]}, f"data/annotations/{name}.parquet", {"annotation": {"backend": f"fake_{name}"}})
    for kind in ("image", "caption"):
        write_parquet({"uid": ["a"]}, f"data/features/{kind}/index.parquet", {"features": {"encoder": "fake"}})
    set_params(project, **{"distill.methods.selection": [], "distill.methods.masked": [],
                           "distill.methods.latent": ["dm"], "distill.ipcs": [1]})
    budget = {"epochs": 2, "repeats": 2, "lr": 0.01, "augment": True}
    save_json({**metrics("dm", 1, ["convnet3", "vgg11"], 70.0), **budget}, "outputs/metrics/dm-ipc1.json")
    save_json({**metrics("dm", 1, ["convnet3", "vgg11"], 60.0), **budget}, "outputs/metrics/dm-latent-ipc1.json")
    save_json({**metrics("full", None, ["convnet3", "vgg11"], 85.0), **budget, "train_images": 100},
              "outputs/metrics/full.json")
    run_stage("report")
    text = (project / "outputs/report.md").read_text()
    assert "| dm | 1 | 70.00 ± 0.50 | 70.00 | 71.00 ± 0.50 | 70.7 |" in text
    assert "| dm-latent | 1 | 60.00 ± 0.50 | 60.00 | 61.00 ± 0.50 | — |" in text
    assert "| whole train split (100 images) | — | 85.00 ± 0.50 | 85.00 | 86.00 ± 0.50 | 93.5 |" in text
    assert "DSDM paper" in text and "fake_captions" in text
    assert "- dm-latent: iterations 3, batch_real 4, lr 1.0" in text
    assert "(figures/distilled/dm-latent-ipc1.png)" in text

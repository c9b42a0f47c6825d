import numpy as np
import pyarrow as pa
import pytest
import torch

from mmdistill.core.runtime import autocast_of
from mmdistill.core.storage import PipelineError, load_tensors, read_parquet, read_parquet_metadata
from mmdistill.selection import coresets as select
from mmdistill.selection.forgetting import ForgettingCounter, count_forgetting
from tests.conftest import run_stage, set_params

torch.set_num_threads(1)


def test_counter_counts_correct_to_incorrect_transitions():
    counter = ForgettingCounter(3)
    history = [[1, 0, 0], [0, 0, 1], [1, 0, 1], [0, 0, 0]]  # presentations x examples, 1 = correct
    for correct in history:
        counter.update(np.arange(3), np.array(correct, bool))
    assert counter.events.tolist() == [2, 0, 1]
    assert counter.learned.tolist() == [True, False, True]
    assert counter.misclassified.tolist() == [2, 4, 2]


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_mislabelled_examples_are_the_most_forgotten(precision):
    gen = torch.Generator().manual_seed(0)
    n = 200
    labels = torch.arange(n) % 2
    patterns = torch.zeros(2, 1, 16, 16)
    patterns[0, :, :8], patterns[1, :, 8:] = 1, 1
    images = patterns[labels] + torch.randn(n, 1, 16, 16, generator=gen)
    flipped = torch.zeros(n, dtype=torch.bool)
    flipped[torch.randperm(n, generator=gen)[:20]] = True
    counter = count_forgetting(images, torch.where(flipped, 1 - labels, labels), 2, net="convnet3", epochs=8,
                               batch_size=32, lr=0.01, device="cpu", seed=0,
                               autocast=autocast_of({"p": precision}, "p", torch.device("cpu"))[2])
    ranked = np.lexsort((-counter.misclassified, -counter.events, counter.learned))
    assert flipped.numpy()[ranked[:20]].sum() >= 15  # 20 of 200 labels flipped; random would give ~2


def test_forgetting_stage_and_selection(annotated):
    events_file = annotated / "data/forgetting/events.parquet"
    first = events_file.read_bytes()  # written by the fixture
    events = read_parquet(events_file)
    assert read_parquet_metadata(events_file)["forgetting"]["settings"]["precision"] == "bf16"  # params.yaml's
    assert events.num_rows == 100 and events.column_names == ["uid", "label", "forgetting_events", "learned",
                                                               "misclassified"]
    run_stage("forgetting")
    assert events_file.read_bytes() == first  # same seed, same bytes

    def picked_and_rest(chosen):
        labels = dict(zip(events["uid"].to_pylist(), events["label"].to_pylist()))
        for c in range(10):
            picked = [u for u, lab in zip(chosen["uid"].to_pylist(), chosen["label"].to_pylist()) if lab == c]
            yield picked, [u for u in labels if labels[u] == c and u not in picked]

    stats = {u: (not learned, e, m) for u, learned, e, m in zip(*(events[c].to_pylist() for c in
                                                         ("uid", "learned", "forgetting_events", "misclassified")))}
    run_stage("selection")  # default select.forgetting_order: fewest (MTT-VL 3.2, Toneva's reliable examples)
    chosen = read_parquet("data/selections/forgetting-ipc2.parquet")
    assert chosen.num_rows == 20 and chosen.column_names == ["label", "class_name", "rank", "uid"]
    for picked, rest in picked_and_rest(chosen):
        assert max(stats[u] for u in picked) <= min(stats[u] for u in rest)  # nothing left is less forgotten
    assert any(max(stats[u] for u in picked) < max(stats[u] for u in rest) for picked, rest in picked_and_rest(chosen))
    assert read_parquet_metadata("data/selections/forgetting-ipc2.parquet")["selection"]["order"] == "fewest"
    run_stage("distill", "--method", "forgetting", "--ipc", "2")
    assert load_tensors("data/distilled/forgetting-ipc2.pt")["info"]["settings"] == {"forgetting_order": "fewest"}
    # the earlier rule as its own method, for rows beside the paper's: the most forgotten, whatever the param says
    most = read_parquet("data/selections/forgetting_most-ipc2.parquet")
    assert read_parquet_metadata("data/selections/forgetting_most-ipc2.parquet")["selection"]["order"] == "most"
    for picked, rest in picked_and_rest(most):
        assert min(stats[u] for u in picked) >= max(stats[u] for u in rest)  # nothing left is more forgotten
    assert set(most["uid"].to_pylist()) != set(chosen["uid"].to_pylist())
    run_stage("distill", "--method", "forgetting_most", "--ipc", "2")
    assert load_tensors("data/distilled/forgetting_most-ipc2.pt")["info"]["settings"] == {"forgetting_order": "most"}

    set_params(annotated, **{"select.forgetting_order": "most"})  # the earlier rule: the most forgotten
    run_stage("selection")
    chosen = read_parquet("data/selections/forgetting-ipc2.parquet")
    assert read_parquet_metadata("data/selections/forgetting-ipc2.parquet")["selection"]["order"] == "most"
    for picked, rest in picked_and_rest(chosen):
        assert min(stats[u] for u in picked) >= max(stats[u] for u in rest)  # nothing left is more forgotten
    run_stage("distill", "--method", "forgetting", "--ipc", "2")
    assert load_tensors("data/distilled/forgetting-ipc2.pt")["info"]["settings"] == {"forgetting_order": "most"}
    assert read_parquet("data/selections/forgetting-ipc2.parquet")["uid"].to_pylist() == most["uid"].to_pylist()


def test_forgetting_orders_and_ipc_larger_than_class():
    events = pa.table({"uid": ["a", "b", "c", "d"], "label": [0, 0, 1, 0], "forgetting_events": [0, 1, 0, 0],
                       "learned": [True, True, False, True], "misclassified": [0, 2, 3, 1]})
    assert [r["uid"] for r in select.forgetting_selection(events, ["A", "B"], [1], "most")[1]] == ["b", "c"]
    assert [r["uid"] for r in select.forgetting_selection(events, ["A", "B"], [1], "fewest")[1]] == ["a", "c"]
    assert select.forgetting_order(events, "fewest").tolist() == [0, 3, 1, 2]  # never learned (c) last
    assert select.forgetting_order(events, "most").tolist() == [2, 1, 3, 0]
    with pytest.raises(PipelineError, match="IPC 2 .* class 'B', which has 1 train images"):
        select.forgetting_selection(events, ["A", "B"], [2], "fewest")
    with pytest.raises(PipelineError, match="select.forgetting_order"):
        select.forgetting_order(events, "least")

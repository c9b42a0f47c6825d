"""forgetting: forgetting events of every train image under the shared ConvNet -> data/forgetting/events.parquet

    python -m mmdistill.stages.forgetting

Forgetting events (Toneva et al., 2019; a coreset baseline of MTT-VL): a network is trained on the
train split, and every time an image is presented in a mini-batch its correctness is read off that same
forward pass (before the update). A forgetting event is a presentation at which an image that was
classified correctly at its previous presentation is misclassified. Images never classified correctly
are the most forgotten of all. Training is its own cached stage; stage `select` turns the counts into the
`forgetting-ipc{K}` selections (per class, the K images with the fewest forgetting events by default,
`select.forgetting_order`) and `forgetting_most-ipc{K}` (the K most forgotten, the earlier rule).

`data/forgetting/events.parquet`, one row per train image:

| column            | type   | meaning                                                     |
|-------------------|--------|-------------------------------------------------------------|
| uid               | string | train image                                                 |
| label             | int64  |                                                             |
| forgetting_events | int32  | correct -> incorrect transitions over all presentations     |
| learned           | bool   | classified correctly at least once                          |
| misclassified     | int32  | presentations at which it was misclassified                 |

Metadata `forgetting`: the settings (`select.forgetting`), seed, device and library versions.
Network and optimiser are those of evaluation (`select.forgetting.net`, SGD momentum 0.9, weight decay
5e-4), without augmentation, at a constant learning rate, its forward passes in `select.forgetting.precision`
(bf16 autocast by default; fp32 the earlier form).
"""
from __future__ import annotations

from mmdistill.core.config import load_params, param, positive
from mmdistill.core.paths import FORGETTING_EVENTS
from mmdistill.core.runtime import autocast_of, resolve_device, versions
from mmdistill.core.storage import check_writable, write_parquet
from mmdistill.data.datasets import load_split
from mmdistill.selection.forgetting import count_forgetting
from mmdistill.stages import run_stage


def main() -> None:
    params = load_params()
    check_writable(FORGETTING_EVENTS)
    seed = param(params, "seed", int)
    device = resolve_device(params)
    settings = {"net": param(params, "select.forgetting.net", str),
                "epochs": positive(params, "select.forgetting.epochs"),
                "batch_size": positive(params, "select.forgetting.batch_size"),
                "lr": positive(params, "select.forgetting.lr", float)}
    precision, _, autocast = autocast_of(params, "select.forgetting.precision", device)
    train = load_split("train")
    counter = count_forgetting(train.normalized(), train.labels, len(train.class_names), device=device, seed=seed,
                               autocast=autocast, **settings)
    write_parquet({"uid": train.uids, "label": train.labels.numpy(), "forgetting_events": counter.events,
                   "learned": counter.learned, "misclassified": counter.misclassified}, FORGETTING_EVENTS,
                  {"forgetting": {"settings": {**settings, "precision": precision}, "seed": seed, "device": str(device),
                                  "versions": versions()}})
    print(f"forgetting: {int((counter.events > 0).sum())} of {len(counter.events)} train images forgotten at least "
          f"once, {int((~counter.learned).sum())} never learned -> {FORGETTING_EVENTS}")


if __name__ == "__main__":
    run_stage(main)

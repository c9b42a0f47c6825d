"""Real-image selections: the synthetic set is K real train images per class, not optimised.

  random     K seeded random real train images per class
  kmeans     the real image nearest to each per-class k-means centre (stage `select`)
  herding    per-class herding coreset of image features (stage `select`)
  kcenter    per-class greedy k-center coreset of image features (stage `select`; `select.kcenter_start`)
  forgetting per-class train images ranked by forgetting events (stages `forgetting` and `select`;
             `select.forgetting_order`: fewest, as MTT-VL, or most)
  forgetting_most  the earlier rule, always: the most forgotten train images per class (stage `select` writes
             this selection whatever `select.forgetting_order` says), for rows beside `forgetting`

kcenter, forgetting and forgetting_most record the choice their selection was made with (its metadata) in the output's
`info.settings` as kcenter_start / forgetting_order.
"""
from __future__ import annotations

from mmdistill.distill.engine import Run
from mmdistill.distill.initial import random_selection, selected, selection_settings
from mmdistill.distill.methods import Method, Synthetic


def _random(run: Run) -> Synthetic:
    init = random_selection(run.train, run.ipc, run.seed)
    return Synthetic(run.train.normalized()[init], init, [])


def _selected(method: str):
    def run_selection(run: Run) -> Synthetic:
        init = selected(run.train, method, run.ipc)
        return Synthetic(run.train.normalized()[init], init, [], settings=selection_settings(method, run.ipc))
    return run_selection


METHODS = {
    "random": Method("random", group="selection", family=None, keys={}, run=_random, engine=False),
    **{name: Method(name, group="selection", family=None, keys={}, run=_selected(name), engine=False)
       for name in ("kmeans", "herding", "kcenter", "forgetting", "forgetting_most")},
}

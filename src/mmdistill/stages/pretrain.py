"""pretrain: the pool of networks DSDM draws its feature extractors from -> data/pretrained/pool.pt

    python -m mmdistill.stages.pretrain

`pretrain.models` networks (`pretrain.net`, seeds seed+0, seed+1, ...) are trained from scratch
on the real train split for `pretrain.epochs` epochs with the shared training loop (SGD momentum
0.9, lr `pretrain.lr` x0.1 at half the epochs, DSA augmentation when `pretrain.augment`, with flip as
`pretrain.flip` says: auto = the prepared dataset's default).

The output is a tensor file (mmdistill.core.storage.load_tensors) with:
  net, channels, classes, image_size   what make_net needs to rebuild each network
  states         list of state_dicts, one per network
  val_accuracy   list of validation accuracies (%), one per network
  info           settings (`pretrain`, with `flip` the value used), seed and library versions
"""
from __future__ import annotations

from mmdistill.core.config import load_params
from mmdistill.nn.pool import pretrain
from mmdistill.stages import run_stage


def main() -> None:
    print(f"wrote {pretrain(load_params())}")


if __name__ == "__main__":
    run_stage(main)

import subprocess
import sys

import pytest

from tests.conftest import REPO

FAULTS = """
import resource, sys, torch
from mmdistill.core.runtime import keep_freed_memory
from mmdistill.nn.nets import make_net
if sys.argv[1] == "on":
    keep_freed_memory()
torch.set_num_threads(1)
net, x = make_net("convnet3", 1, 10, 28).eval(), torch.randn(640, 1, 28, 28)
with torch.no_grad():  # a test pass in batches of 64, after a warm-up batch
    net(x[:64])
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for start in range(0, len(x), 64):
        net(x[start:start + 64])
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")
def test_keep_freed_memory_stops_refaulting_every_batch():
    def faults(mode):
        out = subprocess.run([sys.executable, "-c", FAULTS, mode], capture_output=True, text=True, check=True,
                             env={"PYTHONPATH": str(REPO / "src")})
        return int(out.stdout)
    default, kept = faults("off"), faults("on")
    assert default > 10 * 1_000  # glibc's default: each batch faults its activations in afresh
    assert kept < default / 10

import json
import statistics
import subprocess
import sys

import pytest

from tests.conftest import REPO

FAULTS = """
import json, resource, sys, torch
from mmdistill.core.runtime import keep_freed_memory
from mmdistill.nn.nets import make_net
if sys.argv[1] == "on":
    keep_freed_memory()
torch.set_num_threads(1)
net, x = make_net("convnet3", 1, 10, 28).eval(), torch.randn(640, 1, 28, 28)
faults = []
with torch.no_grad():  # a test pass in batches of 64, after a warm-up batch; minor page faults of each batch
    net(x[:64])
    for start in range(0, len(x), 64):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        net(x[start:start + 64])
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps(faults))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")
def test_keep_freed_memory_stops_refaulting_every_batch():
    def median_faults(mode):
        out = subprocess.run([sys.executable, "-c", FAULTS, mode], capture_output=True, text=True, check=True,
                             env={"PYTHONPATH": str(REPO / "src")})
        return statistics.median(json.loads(out.stdout))
    # the median batch, not the sum: with the memory kept, the heap may still grow once, in one batch
    default, kept = median_faults("off"), median_faults("on")
    assert default > 1_000  # glibc's default: each batch faults its activations in afresh
    assert kept < default / 10

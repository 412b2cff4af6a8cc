"""`python -m curvenet_dist.bench dynamic_loss` runs as a user runs it and prints its figures as the JSON last line."""
from __future__ import annotations

import json
import subprocess
import sys

from tests.conftest import REPO


def test_the_dynamic_loss_benchmark_prints_every_epoch_ratio():
    completed = subprocess.run([sys.executable, "-m", "curvenet_dist.bench", "dynamic_loss", "--batch-size", "8",
                                "--meta-batch-size", "8", "--rounds", "1", "--warmup", "0"],
                               cwd=REPO, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr[-2000:]
    figures = json.loads(completed.stdout.strip().splitlines()[-1])
    assert set(figures["epoch_vs_plain"]) == {f"skip{skip}_interval{interval}" for skip in range(4)
                                              for interval in (1, 2)}
    default = f"skip{figures['default_skip_layers']}_interval{figures['default_meta_interval']}"
    assert default == "skip3_interval2" and figures["ratio_default_vs_plain"] == figures["epoch_vs_plain"][default]
    # A meta step every batch through the whole network costs more than a plain step, whatever the machine's load.
    assert figures["epoch_vs_plain"]["skip0_interval1"] > 1

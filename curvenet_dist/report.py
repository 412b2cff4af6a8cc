"""`python -m curvenet_dist.report RUN_DIR [--top K]`: draw suspects.png of an allocate run folder again.

The logic is in curvenet_dist/tracking/report.py.
"""
from __future__ import annotations

import sys

from curvenet_dist.tracking.report import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

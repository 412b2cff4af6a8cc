"""`python -m curvenet_dist.compare --experiment NAME [options]`: compare MLflow runs as a table, CSV and bar chart.

The logic and the options are in curvenet_dist/tracking/compare.py.
"""
from __future__ import annotations

import sys

from curvenet_dist.tracking.compare import main

if __name__ == "__main__":
    main(sys.argv[1:])

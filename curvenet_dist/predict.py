"""`python -m curvenet_dist.predict RUN_DIR IMAGE_OR_LIST... [--top K] [--csv OUT] [--device cpu|cuda]`: classify
images with a finished run's model.

The logic and the options are in curvenet_dist/engine/classify.py.
"""
from __future__ import annotations

import sys

from curvenet_dist.engine.classify import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

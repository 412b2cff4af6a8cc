"""`python -m curvenet_dist.bench NAME [options]`: run one benchmark; its figures are the JSON on the last line."""
from __future__ import annotations

import importlib
import json
import sys

BENCHMARKS = {
    "curve_overhead": "probe epoch time with and without loss recording",
    "slmo": "plain CE step vs allocate iteration for every skip_layers",
    "dynamic_loss": "Dynamic Loss epoch (iterations + eval pass) vs plain CE epoch for every skip_layers",
    "loaders": "DALI vs torch DataLoader images/s at 224x224 training transforms",
    "methods": "CE vs Meta-Weight-Net vs CurveNet test accuracy and noise AUROC over seeds",
    "image_check": "images/s of the data_prep image check on small PNG and JPEG files",
    "grid": "Table 1 on Fashion-MNIST: CE / MW-Net / CurveNet over imbalance x noise cells and seeds",
    "own_data": "the own-data path on real images: image-folder lists, data_prep, CE / class-balanced CE / CurveNet",
    "scale": "curve features, epoch gather, meta set, weights and allocate start-up at Clothing1M size",
    "predict": "predict's images/s on the CPU beside the evaluation pass's, same images, network and loader",
    "gpu": "the GPU path in one command: DALI mixed decode, ResNet-50 bf16 steps, quickstart stages on the GPU",
    "detect": "mislabel detection: mean probe loss, AUM, cleanlab on K-fold predictions, allocate runs' weights",
    "stage_cost": "whole allocate stages under torchrun, interleaved: meta-learned methods' wall time over CE's",
}


def main(argv: list[str]) -> None:
    if not argv or argv[0] not in BENCHMARKS:
        lines = "\n".join(f"  {name:15s} {what}" for name, what in BENCHMARKS.items())
        print(f"usage: python -m curvenet_dist.bench NAME [options]\nbenchmarks:\n{lines}", file=sys.stderr)
        sys.exit(2)
    module = importlib.import_module(f"curvenet_dist.bench.{argv[0]}")
    figures = module.main(argv[1:])
    print(json.dumps(figures))


if __name__ == "__main__":
    main(sys.argv[1:])

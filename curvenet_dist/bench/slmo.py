"""The `slmo` benchmark: seconds per allocate iteration for each skip_layers against a plain CE step (Table 8).

One run times every variant on the same model and data: after a warm-up, each round times every variant once, in
an order that rotates from round to round, and the medians are reported, so a noisy machine hits all alike.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable

import torch
from torch.nn import functional as F
from torch.utils.flop_counter import FlopCounterMode

from curvenet_dist.config import SLMOConfig
from curvenet_dist.meta.meta_iteration import MetaIteration
from curvenet_dist.models.cifar_resnet import cifar_resnet
from curvenet_dist.models.weighting import CurveNet

NUM_CLASSES = 10
CURVE_LENGTH = 25


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="slmo", description=__doc__)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--meta-batch-size", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds; each times every variant once")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds after the FLOP-counting one")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    return parser.parse_args(argv)


def _timed(step: Callable[[], None], device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def main(argv: list[str]) -> dict:
    args = _parse(argv)
    if args.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(args.device)
    torch.manual_seed(0)
    model = cifar_resnet(32, NUM_CLASSES).to(device)
    weighting_net = CurveNet(CURVE_LENGTH, NUM_CLASSES).to(device)
    # A small LR keeps many steps on random data finite; the step's cost does not depend on it.
    classifier_optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    weighting_optimizer = torch.optim.Adam(weighting_net.parameters(), lr=1e-3, weight_decay=1e-4)
    images = torch.randn(args.batch_size, 3, 32, 32, device=device)
    labels = torch.randint(0, NUM_CLASSES, (args.batch_size,), device=device)
    curves = torch.randn(args.batch_size, CURVE_LENGTH, device=device)
    meta_images = torch.randn(args.meta_batch_size, 3, 32, 32, device=device)
    meta_labels = torch.randint(0, NUM_CLASSES, (args.meta_batch_size,), device=device)

    def plain_step() -> None:
        classifier_optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(images), labels).backward()
        classifier_optimizer.step()

    variants: dict[str, Callable[[], None]] = {"plain": plain_step}
    for skip_layers in range(model.num_stages + 1):
        iteration = MetaIteration(
            model, weighting_net, classifier_optimizer, weighting_optimizer, skip_layers, sync="exact"
        )
        variants[f"skip{skip_layers}"] = (
            lambda iteration=iteration: iteration.step(images, labels, curves, (meta_images, meta_labels))
        )

    names = list(variants)
    # FLOPs of one step each (convolutions and matmuls, second-order backward included): a cost ratio that a
    # busy machine cannot blur. This pass is also the first warm-up round.
    flops = {}
    for name in names:
        with FlopCounterMode(display=False) as counter:
            variants[name]()
        flops[name] = counter.get_total_flops()
    times: dict[str, list[float]] = {name: [] for name in names}
    for round_index in range(args.warmup + args.rounds):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            seconds = _timed(variants[name], device)
            if round_index >= args.warmup:
                times[name].append(seconds)

    median = {name: statistics.median(values) for name, values in times.items()}
    allocate = {skip: median[f"skip{skip}"] for skip in range(model.num_stages + 1)}
    default_skip_layers = SLMOConfig().skip_layers
    return {
        "plain_step_s": median["plain"],
        "allocate_step_s": allocate,
        "allocate_vs_plain": {skip: seconds / median["plain"] for skip, seconds in allocate.items()},
        "default_skip_layers": default_skip_layers,
        "ratio_default_vs_plain": allocate[default_skip_layers] / median["plain"],
        "ratio_skip0_vs_skipmax": allocate[0] / allocate[model.num_stages],
        "allocate_flops_vs_plain": {
            skip: flops[f"skip{skip}"] / flops["plain"] for skip in range(model.num_stages + 1)
        },
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "threads": torch.get_num_threads(),
        "batch_size": args.batch_size,
        "meta_batch_size": args.meta_batch_size,
        "rounds": args.rounds,
    }


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1:])))

"""The `dynamic_loss` benchmark: the cost of a Dynamic Loss epoch against a plain CE epoch.

A Dynamic Loss epoch is N/B allocate iterations: virtual step, meta step, actual step with corrected targets and
margins, and the draw of each sample's next y_pred from the step's logits (its ranks come from the same step's
losses, so there is no pass of its own). Each kind of step is timed on the same model and random data, rotating
the order round by round and taking medians as the `slmo` benchmark does, and combined into the epoch ratio
    (iteration with a meta step + (k - 1) * iteration without) / k / plain step, k the meta interval,
for each skip_layers and for a meta step every iteration and every second one (`dynamic_loss.meta_interval`;
the defaults, `dynamic_loss.skip_layers` 3 and `meta_interval` 2, give `ratio_default_vs_plain`).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections.abc import Callable

import torch
from torch.nn import functional as F

from curvenet_dist.bench.slmo import timed
from curvenet_dist.config import DynamicLossConfig
from curvenet_dist.meta.meta_iteration import MetaIteration
from curvenet_dist.methods.logit_adjust import log_prior_adjustment
from curvenet_dist.models.cifar_resnet import cifar_resnet
from curvenet_dist.models.dynamic_loss import DynamicLoss, DynamicLossTraining

NUM_CLASSES = 10


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="dynamic_loss", description=__doc__)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--meta-batch-size", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds; each times every variant once")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds first")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    return parser.parse_args(argv)


def main(argv: list[str]) -> dict:
    args = _parse(argv)
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    torch.manual_seed(0)
    model = cifar_resnet(32, NUM_CLASSES).to(device)
    net = DynamicLoss(log_prior_adjustment([1] * NUM_CLASSES, tau=1.0)).to(device)
    classifier_optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    net_optimizer = torch.optim.Adam(net.parameters(), lr=3e-3)
    images = torch.randn(args.batch_size, 3, 32, 32, device=device)
    labels = torch.randint(0, NUM_CLASSES, (args.batch_size,), device=device)
    inputs = torch.stack([torch.randint(0, net.buckets, (args.batch_size,)),
                          torch.randint(0, NUM_CLASSES, (args.batch_size,))], 1).to(device)
    meta_batch = (torch.randn(args.meta_batch_size, 3, 32, 32, device=device),
                  torch.randint(0, NUM_CLASSES, (args.meta_batch_size,), device=device))

    def plain_step() -> None:
        classifier_optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(images), labels).backward()
        classifier_optimizer.step()

    def dynamic_loss_step(iteration: MetaIteration, meta: tuple | None) -> None:
        result = iteration.step(images, labels, inputs, meta)
        torch.multinomial(result.logits.float().softmax(1), 1)

    variants: dict[str, Callable[[], None]] = {"plain": plain_step}
    iterations = {}
    for skip_layers in range(model.num_stages + 1):
        iterations[skip_layers] = MetaIteration(model, net, classifier_optimizer, net_optimizer, skip_layers,
                                                training_loss=DynamicLossTraining(net))
        variants[f"meta{skip_layers}"] = lambda it=iterations[skip_layers]: dynamic_loss_step(it, meta_batch)
    variants["no_meta"] = lambda: dynamic_loss_step(iterations[0], None)

    names = list(variants)
    times: dict[str, list[float]] = {name: [] for name in names}
    for round_index in range(args.warmup + args.rounds):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            seconds = timed(variants[name], device)
            if round_index >= args.warmup:
                times[name].append(seconds)
    median = {name: statistics.median(values) for name, values in times.items()}
    epoch_vs_plain = {
        f"skip{skip}_interval{interval}": (
            (median[f"meta{skip}"] + (interval - 1) * median["no_meta"]) / interval
        ) / median["plain"]
        for skip in range(model.num_stages + 1) for interval in (1, 2)
    }
    default = DynamicLossConfig()
    return {
        "step_s": median,
        "epoch_vs_plain": epoch_vs_plain,
        "default_skip_layers": default.skip_layers,
        "default_meta_interval": default.meta_interval,
        "ratio_default_vs_plain": epoch_vs_plain[f"skip{default.skip_layers}_interval{default.meta_interval}"],
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "threads": torch.get_num_threads(),
        "batch_size": args.batch_size,
        "meta_batch_size": args.meta_batch_size,
        "rounds": args.rounds,
    }


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1:])))

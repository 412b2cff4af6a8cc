"""The `slmo` benchmark: seconds per allocate step for every skip_layers against a plain DDP step (Table 8), run
as users run it: under torchrun (2 ranks by default; gloo on CPU, NCCL on GPU), exact meta-gradients, CurveNet
with the config's weight scale, for the CIFAR ResNet of the quickstart and the ResNet-50 of
configs/clothing1m_r50.yaml (at a resolution and batch a CPU can time, `--resnet50-image-size/-batch-size`).

After a warm-up, each round times every variant once, in an order that rotates from round to round, so machine
drift hits all alike; min/median/max over rounds are reported. Beside each time ratio is the FLOP ratio (torch's
FLOP counter, second-order backward included), which a busy machine cannot blur: a time ratio below its FLOP
ratio is flagged as noise. `--cost-model` prints per-step FLOPs and bytes communicated for ResNet-50 at 224x224
(the Clothing1M config's batch) at 8 and 64 ranks instead.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.flop_counter import FlopCounterMode

from curvenet_dist.config import Config, load_config
from curvenet_dist.curves.features import curve_input_length
from curvenet_dist.engine.components import autocast_for, build_model
from curvenet_dist.engine.distributed import exit_without_finalization
from curvenet_dist.engine.launch import torchrun_command
from curvenet_dist.meta.meta_iteration import MetaIteration
from curvenet_dist.meta.slmo import split_layers
from curvenet_dist.meta.weight_scale import WeightScale, balanced_class_factors
from curvenet_dist.meta.weighting_optimizer import weighting_optimizer
from curvenet_dist.models.weighting import CurveNet

REPO = Path(__file__).resolve().parents[2]
QUICKSTART = REPO / "configs" / "quickstart.yaml"
CLOTHING1M = REPO / "configs" / "clothing1m_r50.yaml"
# Only the head's width depends on it, a negligible part of either model's step.
NUM_CLASSES = 10


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="slmo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=QUICKSTART,
                        help="its model gives the top-level ratio_default_vs_plain; the other shipped backbone "
                             "comes from the quickstart or the Clothing1M config")
    parser.add_argument("--nproc", type=int, default=2, help="torchrun ranks")
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds; each times every variant once")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds after the FLOP-counting one")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--resnet50-image-size", type=int, default=64, help="224 is the Clothing1M config's")
    parser.add_argument("--resnet50-batch-size", type=int, default=8,
                        help="train and meta batch per rank (32 in the Clothing1M config)")
    parser.add_argument("--cost-model", action="store_true", help="print the ResNet-50 cost model and stop")
    return parser.parse_args(argv)


def _model_configs(args: argparse.Namespace) -> dict[str, Config]:
    """The two shipped backbones, each from `--config` where it is that config's model."""
    paths = {"cifar_resnet": QUICKSTART, "resnet50": CLOTHING1M}
    paths[load_config(str(args.config), []).model.name] = args.config
    batch = args.resnet50_batch_size
    overrides = {"cifar_resnet": [], "resnet50": [f"data.image_size={args.resnet50_image_size}",
                                                  f"data.batch_size={batch}", f"meta.batch_size={batch}"]}
    return {name: load_config(str(path), ["method=curvenet", *overrides[name]]) for name, path in paths.items()}


class Step:
    """One model's variants: a plain DDP step (method=ce) and an allocate step (CurveNet, a meta update) for every
    skip_layers, built as the allocate stage builds them."""

    def __init__(self, config: Config, device: torch.device, world_size: int):
        self.device = device
        self.model = build_model(config, NUM_CLASSES, device)
        curve_length = curve_input_length(config.probe.epochs, config.curvenet.skip_epochs)
        settings = config.curvenet
        self.weighting_net = CurveNet(curve_length, NUM_CLASSES, settings.embedding_dim, tuple(settings.curve_hidden),
                                      tuple(settings.head_hidden)).to(device)
        # A small LR keeps many steps on random data finite; the step's cost does not depend on it.
        optimizer = torch.optim.SGD(self.model.parameters(), lr=1e-3, momentum=config.optim.momentum,
                                    weight_decay=config.optim.weight_decay, nesterov=config.optim.nesterov)
        net_optimizer = weighting_optimizer(self.weighting_net.parameters(), settings.meta_lr,
                                            settings.meta_weight_decay)
        scale_samples = settings.scale_samples
        scale = WeightScale(settings.weight_scale, config.meta.sync,
                            torch.randn(scale_samples, curve_length, device=device),
                            torch.randint(0, NUM_CLASSES, (scale_samples,), device=device),
                            balanced_class_factors(np.full(NUM_CLASSES, 100)))
        data_parallel = (DistributedDataParallel(self.model, device_ids=[device.index] if device.type == "cuda"
                                                 else None, forward_sync_buffers=False) if world_size > 1 else None)
        size, batch, meta_batch = config.data.image_size, config.data.batch_size, config.meta.batch_size
        images = torch.randn(batch, 3, size, size, device=device)
        labels = torch.randint(0, NUM_CLASSES, (batch,), device=device)
        curves = torch.randn(batch, curve_length, device=device)
        meta = (torch.randn(meta_batch, 3, size, size, device=device),
                torch.randint(0, NUM_CLASSES, (meta_batch,), device=device))
        autocast = autocast_for(config, device)
        plain = MetaIteration(self.model, None, optimizer, None, 0, config.meta.sync, data_parallel=data_parallel)

        def run(iteration: MetaIteration, meta_batch: tuple | None) -> Callable[[], None]:
            def step() -> None:
                with autocast():
                    iteration.step(images, labels, curves, meta_batch)
            return step

        self.variants = {"plain": run(plain, None)}
        for skip_layers in range(self.model.num_stages + 1):
            iteration = MetaIteration(self.model, self.weighting_net, optimizer, net_optimizer, skip_layers,
                                      config.meta.sync, scale, data_parallel=data_parallel)
            self.variants[f"skip{skip_layers}"] = run(iteration, meta)
        self.shape = {"image_size": size, "batch_size": batch, "meta_batch_size": meta_batch}

    def flops(self) -> dict[str, int]:
        counted = {}
        for name, step in self.variants.items():
            with FlopCounterMode(display=False) as counter:
                step()
            counted[name] = counter.get_total_flops()
        return counted

    def timed(self, name: str) -> float:
        return timed(self.variants[name], self.device)


def timed(step: Callable[[], None], device: torch.device) -> float:
    """Seconds `step` takes, the device's queued work included."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def _spread(values: list[float]) -> dict[str, float]:
    return {"min": min(values), "median": statistics.median(values), "max": max(values)}


def measure_step_variants(step: Step, rounds: int, warmup: int) -> dict:
    # The FLOP-counting pass is also the first warm-up round.
    flops = step.flops()
    names = list(step.variants)
    times: dict[str, list[float]] = {name: [] for name in names}
    for round_index in range(warmup + rounds):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            seconds = step.timed(name)
            if round_index >= warmup:
                times[name].append(seconds)
    plain = statistics.median(times["plain"])
    skips = [int(name.removeprefix("skip")) for name in names[1:]]
    time_ratio = {skip: statistics.median(times[f"skip{skip}"]) / plain for skip in skips}
    flop_ratio = {skip: flops[f"skip{skip}"] / flops["plain"] for skip in skips}
    return {
        **step.shape,
        "plain_step_s": _spread(times["plain"]),
        "allocate_step_s": {skip: _spread(times[f"skip{skip}"]) for skip in skips},
        "time_ratio": time_ratio,
        "flop_ratio": flop_ratio,
        "plain_gflops_per_rank": flops["plain"] / 1e9,
        "noise": [skip for skip in skips if time_ratio[skip] < flop_ratio[skip]],
    }


def run_rank(argv: list[str]) -> None:
    """One torchrun rank: measure both models; rank 0 writes the figures to the given file."""
    import torch.distributed as dist

    args = _parse(argv[1:])
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    dist.init_process_group("nccl" if args.device == "cuda" else "gloo")
    local_rank = int(os.environ["LOCAL_RANK"])
    device = torch.device(f"cuda:{local_rank}" if args.device == "cuda" else "cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    world_size = dist.get_world_size()
    figures = {}
    for name, config in _model_configs(args).items():
        measured = measure_step_variants(Step(config, device, world_size), args.rounds, args.warmup)
        default = config.curvenet.skip_layers
        figures[name] = {"ratio_default_vs_plain": measured["time_ratio"][default],
                         "flop_ratio_default": measured["flop_ratio"][default],
                         "default_skip_layers": default, "world_size": world_size, **measured}
    if dist.get_rank() == 0:
        Path(argv[0]).write_text(json.dumps({
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "threads_per_rank": torch.get_num_threads(), "per_model": figures}))
    dist.destroy_process_group()
    exit_without_finalization(0)


def cost_model() -> dict:
    """ResNet-50 of the Clothing1M config at 224x224 (per-rank batch and meta batch 32): FLOPs per rank and per step
    from the FLOP counter (on the meta device: no memory, no arithmetic), and bytes each rank sends per step, from
    parameter counts, for a ring all-reduce (2 (R-1)/R times the payload) of float32 tensors."""
    config = load_config(str(CLOTHING1M), [])
    step = Step(config, torch.device("meta"), world_size=1)
    flops = step.flops()
    model = step.model
    parameters = sum(param.numel() for param in model.parameters())
    statistics_count = sum(buffer.numel() for buffer in model.buffers() if buffer.is_floating_point())
    weighting = sum(param.numel() for param in step.weighting_net.parameters())
    # Plain: DDP's gradient buckets and the running statistics. Allocate adds the exact virtual gradient of the
    # top parameters (forward and backward of its all-reduce) and the weighting net's gradient with the meta loss.
    payload = {"plain": 4 * (parameters + statistics_count)}
    top = {}
    for skip_layers in range(model.num_stages + 1):
        top[skip_layers] = sum(param.numel() for param in split_layers(model, skip_layers).top_parameters.values())
        payload[f"skip{skip_layers}"] = payload["plain"] + 4 * (2 * top[skip_layers] + weighting + 1)
    figures = {"model": "resnet50", "image_size": config.data.image_size, "batch_size": config.data.batch_size,
               "meta_batch_size": config.meta.batch_size, "parameters": parameters,
               "virtually_updated_parameters": top, "gflops_per_rank": {k: v / 1e9 for k, v in flops.items()},
               "flop_ratio": {k: v / flops["plain"] for k, v in flops.items()}}
    for ranks in (8, 64):
        figures[f"ranks{ranks}"] = {
            "tflops_per_step": {k: ranks * v / 1e12 for k, v in flops.items()},
            "mb_sent_per_rank": {k: 2 * (ranks - 1) / ranks * v / 1e6 for k, v in payload.items()},
        }
    return figures


def main(argv: list[str]) -> dict:
    args = _parse(argv)
    if args.cost_model:
        return cost_model()
    load_start = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="slmo-") as folder:
        out = Path(folder) / "figures.json"
        # The ranks get the options re-spelled, without --nproc: torchrun's parser would take a script's `--nproc`
        # as an abbreviation of its own --nproc-per-node and refuse it as ambiguous.
        rank_options = ["--config", str(args.config), "--rounds", str(args.rounds), "--warmup", str(args.warmup),
                        "--device", args.device, "--resnet50-image-size", str(args.resnet50_image_size),
                        "--resnet50-batch-size", str(args.resnet50_batch_size)]
        command = torchrun_command(args.nproc, "curvenet_dist.bench.slmo", [str(out), *rank_options], ["--module"])
        subprocess.run(command, check=True)
        figures = json.loads(out.read_text())
    model = load_config(str(args.config), []).model.name
    return {"ratio_default_vs_plain": figures["per_model"][model]["ratio_default_vs_plain"], **figures,
            "config": str(args.config), "rounds": args.rounds,
            "load_average_start_end": [load_start, os.getloadavg()[0]]}


if __name__ == "__main__":
    run_rank(sys.argv[1:])

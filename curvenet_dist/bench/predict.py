"""`predict`'s images/s on the CPU beside the evaluation pass's, on the same images, network, batch size and loader.

A network of the config's backbone, as initialised (the figures do not depend on the weights), is written as a
finished run's model file. Each round then times, on the config's test split, one after the other:
- the evaluation pass a stage runs after each epoch (engine/evaluate.py `predict`: the split's loader, the
  network, argmax and loss), and
- `predict`'s pass (engine/classify.py): the split's data_prep list read, the same loader, class probabilities,
  top K.
One process on the CPU; one untimed round of each first, then medians over the rounds, the two passes taking
turns to go first. Each pass is timed in wall seconds and in CPU seconds (this process's and its loader workers'):
on a machine other jobs share, the wall-clock images/s follow their load, the CPU seconds a pass costs much less.
`predict_vs_evaluation` and `predict_vs_evaluation_cpu` are medians over the rounds of predict's speed relative to
the evaluation pass's in the same round. Loading the model file is timed on its own (`predict_load_s`).
"""
from __future__ import annotations

import argparse
import contextlib
import resource
import statistics
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]


def cpu_seconds() -> float:
    """CPU seconds used so far by this process and its finished children (the loader's workers, joined at the end
    of each pass)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def median_ratio(numerators: list[float], denominators: list[float]) -> float:
    return round(statistics.median(n / d for n, d in zip(numerators, denominators)), 3)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m curvenet_dist.bench predict", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(REPO / "configs" / "quickstart.yaml"))
    parser.add_argument("--rounds", type=int, default=10, help="timed rounds of each pass")
    parser.add_argument("--top", type=int, default=5, help="classes kept per image by predict")
    parser.add_argument("overrides", nargs="*", help="config overrides, e.g. data.num_workers=2")
    arguments = parser.parse_args(argv)
    for name in ("rounds", "top"):
        if getattr(arguments, name) < 1:
            parser.error(f"--{name} must be at least 1")
    return arguments


def main(argv: list[str]) -> dict:
    from curvenet_dist.config import load_config
    from curvenet_dist.data.datasets import build_splits
    from curvenet_dist.data.loader import build_loader
    from curvenet_dist.engine.classify import class_probabilities, images_table, input_config, top_classes
    from curvenet_dist.engine.components import build_model
    from curvenet_dist.engine.evaluate import predict
    from curvenet_dist.engine.model_file import describe_model, load_run_model, write_model_file

    arguments = parse_args(argv)
    device = torch.device("cpu")
    with tempfile.TemporaryDirectory(prefix="curvenet-predict-bench-") as folder:
        run_dir = Path(folder)
        config = load_config(arguments.config, [f"run.dir={run_dir}", "run.device=cpu", *arguments.overrides])
        splits = build_splits(config.data, config.bias)
        test = splits.test
        # predict reads the images as a user gives them: a data_prep list file of the split evaluated.
        test_list = run_dir / "test.txt"
        test_list.write_text("".join(f"{path} {label}\n" for path, label in zip(test.paths, test.labels)))
        model = build_model(config, splits.num_classes, device)
        write_model_file(run_dir, model, describe_model(config, splits.class_names, "allocate"))
        (run_dir / "metrics.json").write_text("{}")

        start = time.perf_counter()
        served, description = load_run_model(run_dir, device)
        load_s = time.perf_counter() - start
        eval_loader = build_loader(config.data, test, train=False, rank=0, world_size=1, seed=config.run.seed,
                                   device=device)
        data = input_config(description, config.data.eval_batch_size, config.data.num_workers)

        def evaluation_pass() -> None:
            predict(model, eval_loader, device, len(test), contextlib.nullcontext)

        def predict_pass() -> None:
            table = images_table([test_list], test.image_root, description.num_classes)
            top_classes(class_probabilities(served, description, table, data, device), arguments.top)

        passes = [("evaluation", evaluation_pass), ("predict", predict_pass)]
        seconds: dict[str, list[float]] = {"evaluation": [], "predict": []}
        cpu: dict[str, list[float]] = {"evaluation": [], "predict": []}
        for round_number in range(arguments.rounds + 1):
            # Each round in the other order, so a pass does not always follow the same one.
            for name, run_pass in passes if round_number % 2 else passes[::-1]:
                start, start_cpu = time.perf_counter(), cpu_seconds()
                run_pass()
                if round_number:  # round 0 warms up
                    seconds[name].append(time.perf_counter() - start)
                    cpu[name].append(cpu_seconds() - start_cpu)
    evaluation_s, predict_s = statistics.median(seconds["evaluation"]), statistics.median(seconds["predict"])
    evaluation_cpu_s, predict_cpu_s = statistics.median(cpu["evaluation"]), statistics.median(cpu["predict"])
    return {"images": len(test), "image_size": config.data.image_size, "model": config.model.name,
            "batch_size": config.data.eval_batch_size, "num_workers": config.data.num_workers,
            "loader": config.data.loader, "threads": torch.get_num_threads(), "rounds": arguments.rounds,
            "evaluation_images_per_s": round(len(test) / evaluation_s, 1),
            "predict_images_per_s": round(len(test) / predict_s, 1),
            "predict_vs_evaluation": median_ratio(seconds["evaluation"], seconds["predict"]),
            "evaluation_images_per_cpu_s": round(len(test) / evaluation_cpu_s, 1),
            "predict_images_per_cpu_s": round(len(test) / predict_cpu_s, 1),
            "predict_vs_evaluation_cpu": median_ratio(cpu["evaluation"], cpu["predict"]),
            "predict_load_s": round(load_s, 3),
            "evaluation_s_all": [round(s, 4) for s in seconds["evaluation"]],
            "predict_s_all": [round(s, 4) for s in seconds["predict"]]}

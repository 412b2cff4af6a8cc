"""`predict`'s images/s on the CPU beside the evaluation pass's, on the same images, network, batch size and loader.

A network of the config's backbone, as initialised (the figures do not depend on the weights), is written as a
finished run's model file. Each round then times, on the config's test split, one after the other:
- the evaluation pass a stage runs after each epoch (engine/evaluate.py `predict`: the split's loader, the
  network, argmax and loss), and
- `predict`'s pass (engine/classify.py): the split's data_prep list read, the same loader, class probabilities,
  top K.
One process on the CPU; one untimed round of each first, then medians over the rounds, the two passes taking
turns to go first. `predict_vs_evaluation` is the median over the rounds of predict's speed relative to the
evaluation pass's in the same round (a ratio of two passes a second apart, which shared machines' load swings
disturb less than the images/s). Loading the model file is timed on its own (`predict_load_s`).
"""
from __future__ import annotations

import argparse
import contextlib
import statistics
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]


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
        for round_number in range(arguments.rounds + 1):
            # Each round in the other order, so a pass does not always follow the same one.
            for name, run_pass in passes if round_number % 2 else passes[::-1]:
                start = time.perf_counter()
                run_pass()
                if round_number:  # round 0 warms up
                    seconds[name].append(time.perf_counter() - start)
    evaluation_s, predict_s = statistics.median(seconds["evaluation"]), statistics.median(seconds["predict"])
    return {"images": len(test), "image_size": config.data.image_size, "model": config.model.name,
            "batch_size": config.data.eval_batch_size, "num_workers": config.data.num_workers,
            "loader": config.data.loader, "threads": torch.get_num_threads(), "rounds": arguments.rounds,
            "evaluation_images_per_s": round(len(test) / evaluation_s, 1),
            "predict_images_per_s": round(len(test) / predict_s, 1),
            "predict_vs_evaluation": round(statistics.median(e / p for e, p in zip(seconds["evaluation"],
                                                                                     seconds["predict"])), 3),
            "predict_load_s": round(load_s, 3),
            "evaluation_s_all": [round(s, 4) for s in seconds["evaluation"]],
            "predict_s_all": [round(s, 4) for s in seconds["predict"]]}

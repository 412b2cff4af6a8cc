"""A user's own labelled image folder end to end: data_prep image-folder with an audited true-label column, then
probe and CurveNet on 2 ranks through torchrun with configs/prepared.yaml, as README's "Bringing data" shows."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
from sklearn.datasets import load_digits
from mlflow.tracking import MlflowClient
from sklearn.metrics import roc_auc_score

from curvenet_dist.curves.store import CurveStore
from curvenet_dist.data.sharding import batches_per_epoch
from curvenet_dist.data.sample_table import PreparedDataset
from curvenet_dist.engine.evaluate import near_chance_warning
from curvenet_dist.tracking.report import class_relative
from tests.conftest import REPO, TINY, torchrun

pytestmark = pytest.mark.slow
PREPARED = str(REPO / "configs" / "prepared.yaml")
ALLOCATE = ["allocate.epochs=3", "allocate.milestones=[2]", "curvenet.skip_epochs=1", "meta.batch_size=20",
            "curvenet.skip_layers=2"]


def digits_folder(root, rng):
    """Digits as 8x8 PNGs; a long-tailed training list with 30% wrong labels, true labels given for every other
    training line; clean meta (5 per class) and test (15 per class) lists. Returns the training rows."""
    digits = load_digits()
    train_lines, meta_lines, test_lines, rows = [], [], [], []
    for label in range(10):
        ids = rng.permutation(np.flatnonzero(digits.target == label))
        (root / "images" / str(label)).mkdir(parents=True)
        for position, sample in enumerate(ids[: 20 + 60 - 5 * label]):
            path = f"{label}/{sample}.png"
            Image.fromarray((digits.images[sample] * 15).astype(np.uint8), "L").save(root / "images" / path)
            if position < 5:
                meta_lines.append(f"{path} {label}")
            elif position < 20:
                test_lines.append(f"{path} {label}")
            else:
                given = int(rng.integers(0, 10)) if rng.random() < 0.3 else label
                audited = len(rows) % 2 == 0
                train_lines.append(f"{path} {given} {label}" if audited else f"{path} {given}")
                rows.append((given, label if audited else -1))
    for name, lines in (("train", train_lines), ("meta", meta_lines), ("test", test_lines)):
        (root / f"{name}.txt").write_text("\n".join(lines) + "\n")
    return rows


def test_audited_labels_are_scored_and_nothing_is_changed_behind_the_users_back(tmp_path, mlflow_server):
    root = tmp_path / "mine"
    rows = digits_folder(root, np.random.default_rng(0))
    prepared = tmp_path / "prepared"
    subprocess.run([sys.executable, "-m", "data_prep", "image-folder", "--images", str(root / "images"),
                    "--train-list", str(root / "train.txt"), "--meta-list", str(root / "meta.txt"),
                    "--test-list", str(root / "test.txt"), "--out", str(prepared)],
                   cwd=REPO, check=True, capture_output=True, text=True)
    dataset = PreparedDataset.read(prepared)
    given, true = np.array(rows).T
    assert dataset.splits["train"].labels.tolist() == given.tolist()

    data = [f"data.path={prepared}", "data.num_workers=0", *TINY]
    probe_dir, curvenet_dir = tmp_path / "probe", tmp_path / "curvenet"
    result = torchrun("probe.py", 2, ["--config", PREPARED, f"run.dir={probe_dir}", *data, "probe.epochs=4"])
    [line] = [line for line in result.stdout.splitlines() if line.startswith("data: ")]
    assert line == (f"data: prepared {prepared} (10 classes); synthetic bias: none; train {len(rows)}, meta split 50, "
                    f"test 150, true label known for {(true >= 0).sum()} training samples")
    # How many optimizer steps the data gives, said up front: a small dataset at a large batch gets few.
    steps = batches_per_epoch(len(rows), 2, 64)
    assert (f"{len(rows)} training samples, 10 classes, 2 rank(s) x batch 64: {steps} steps an epoch, {4 * steps} "
            "in all; ") in result.stdout
    # A probe that ends near chance (this one's 4 tiny epochs may) says so and names the small-data config.
    accuracy = json.loads((probe_dir / "metrics.json").read_text())["test_acc"]
    assert ("near chance" in result.stdout) == (near_chance_warning(accuracy, 10, 4 * steps, "") is not None)
    store = CurveStore.open(probe_dir / "curves.zarr", mode="r")
    assert store.labels.tolist() == given.tolist() and store.true_labels.tolist() == true.tolist()
    assert (probe_dir / "loss_curves.png").is_file(), "Fig. 1 from the audited samples"

    result = torchrun("allocate.py", 2, ["--config", PREPARED, f"allocate.probe_dir={probe_dir}",
                                         f"run.dir={curvenet_dir}", "method=curvenet", *data, *ALLOCATE,
                                         "tracking.enabled=true", f"tracking.uri={mlflow_server}",
                                         "tracking.experiment=user-data"])
    assert f"a meta update every 2 batch(es) ({-(-steps // 2) * 2} before the freeze)" in result.stdout
    assert f"2 rank(s) x batch 64: {steps} steps an epoch" in result.stdout
    metrics = json.loads((curvenet_dir / "metrics.json").read_text())
    assert ("near chance" in result.stdout) == (near_chance_warning(metrics["test_acc"], 10, 3 * steps, "") is not None)
    audited = true >= 0
    weights = np.load(curvenet_dir / "weights.npy")
    assert metrics["noise_scored_samples"] == audited.sum() < len(rows)
    relative = class_relative(weights, given)
    assert metrics["noise_auroc"] == pytest.approx(roc_auc_score(given[audited] != true[audited], -relative[audited]))
    assert metrics["noise_auroc_raw"] == pytest.approx(roc_auc_score(given[audited] != true[audited], -weights[audited]))
    assert f"noise detection scored on the {audited.sum()} of {len(rows)} training samples" in result.stdout
    epoch_lines = [line for line in result.stdout.splitlines() if line.startswith("[allocate curvenet] epoch ")]
    assert len(epoch_lines) == 3 and all(" noise_auroc 0." in line or " noise_auroc 1" in line for line in epoch_lines)
    for figure in ("weights_by_class.png", "suspects.png"):
        assert (curvenet_dir / figure).is_file()
    run = MlflowClient(mlflow_server).get_run((curvenet_dir / "mlflow_run_id").read_text().strip())
    assert run.info.status == "FINISHED"
    # Each epoch's mean weight of the audited clean and mislabeled samples, for following the separation over epochs.
    assert {"weight_clean", "weight_mislabeled"} <= run.data.metrics.keys()
    # ...and the AUROC of each epoch's weights; frozen after the milestone, the last epoch's is the final one.
    history = MlflowClient(mlflow_server).get_metric_history(run.info.run_id, "noise_auroc")
    by_step = {entry.step: entry.value for entry in history}
    assert sorted(by_step) == [0, 1, 2, 3]
    assert by_step[2] == by_step[3] == pytest.approx(metrics["noise_auroc"])
    assert "suspects.png" in {item.path for item in MlflowClient(mlflow_server).list_artifacts(run.info.run_id)}


@pytest.mark.parametrize("accuracy, classes, warned", [
    (0.163, 10, True),   # configs/prepared.yaml's probe on 688 digits (docs/BENCHMARKS.md)
    (0.436, 10, False),  # poor, but learning
    (0.52, 2, True), (0.70, 2, False),
    (0.05, 101, False),  # far above chance on a hard 101-class set
])
def test_a_stage_that_ends_near_chance_names_the_small_data_config(accuracy, classes, warned):
    warning = near_chance_warning(accuracy, classes, 90, "so its loss curves carry nothing")
    assert (warning is not None) == warned
    if warned:
        assert warning.startswith(f"warning: test accuracy {accuracy:.4f} is near chance") and "90 optimizer steps" in warning
        assert "configs/prepared_small.yaml" in warning and (REPO / "configs" / "prepared_small.yaml").is_file()

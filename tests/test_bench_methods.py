"""`python -m curvenet_dist.bench methods` on a tiny digits run: the methods side by side, and beside the weights'
noise AUROC the mean-probe-loss detector's on the same curve store."""
from __future__ import annotations

import json

import numpy as np
import zarr
from sklearn.metrics import roc_auc_score

from curvenet_dist.bench.__main__ import main as bench

TINY = ["--seeds", "0", "--methods", "ce", "curvenet", "--nproc", "1", "data.image_size=8", "model.width=8",
        "probe.epochs=3", "probe.cycle_epochs=1", "allocate.epochs=2", "allocate.milestones=[1]",
        "curvenet.skip_epochs=0", "meta.batch_size=20"]


def test_methods_side_by_side_with_the_detector_on_the_same_store(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    bench(["methods", "--run-dir", str(tmp_path), *TINY])
    lines = capsys.readouterr().out.strip().splitlines()
    summary = json.loads(lines[-1])
    store = zarr.open_group(str(tmp_path / "seed0" / "probe" / "curves.zarr"), mode="r")
    labels, mislabeled = store["label"][:], store["label"][:] != store["true_label"][:]
    mean_loss = store["loss"][:].astype(np.float64).mean(1)  # the detector sums in float64: float32 ties would differ
    assert abs(summary["detector_auroc_mean"] - roc_auc_score(mislabeled, mean_loss)) < 1e-9
    weights = np.load(tmp_path / "seed0" / "curvenet" / "weights.npy")
    mixed = [c for c in np.unique(labels) if 0 < mislabeled[labels == c].sum() < (labels == c).sum()]
    for score, figure in ((mean_loss, "detector_auroc_within_class_mean"),
                          (-weights, "curvenet_noise_auroc_within_class_mean")):
        expected = np.mean([roc_auc_score(mislabeled[labels == c], score[labels == c]) for c in mixed])
        assert abs(summary[figure] - expected) < 1e-9
    assert "ce_noise_auroc_mean" not in summary and 0 <= summary["curvenet_noise_auroc_mean"] <= 1
    assert not any(key.startswith(("mwnet", "balanced_ce")) for key in summary)
    assert f"(mean probe loss {summary['detector_auroc_mean']:.3f})" in lines[-2]

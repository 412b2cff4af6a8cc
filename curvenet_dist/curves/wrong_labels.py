"""How many of each class's given labels look wrong, from the probe alone: the suspects' rule (DESIGN §8) with the
probe's last epoch as the classifier. Its loss gives p(given label | x) and its margin whether another class was
predicted; the mean margin over all epochs (AUM) vetoes samples the probe had learned. The allocate stage reads it
before it trains, so CurveNet's class totals can follow each class's clean share (DESIGN §5)."""
from __future__ import annotations

import numpy as np

from curvenet_dist.curves.features import mean_margin
from curvenet_dist.curves.store import CurveStore
from curvenet_dist.tracking.suspects import flag_wrong_labels


def probe_wrong_label_fraction(store: CurveStore, num_classes: int) -> np.ndarray | None:
    """Each given class's share of samples the rule flags (0 for a class without samples); None for a store
    recorded before the probe kept margins. The store must hold at least one complete epoch."""
    if store.margin is None:
        return None
    labels = store.labels
    last = store.complete_epochs()[-1]
    flagged = flag_wrong_labels(store.read_epoch(last, "loss"), labels, store.read_epoch(last, "margin") < 0,
                                mean_margin(store))
    counts = np.bincount(labels, minlength=num_classes)
    return np.bincount(labels, weights=flagged, minlength=num_classes) / np.maximum(counts, 1)

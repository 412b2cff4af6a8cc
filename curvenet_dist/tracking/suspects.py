"""Which training labels look wrong, and how many in each class.

The order: the final classifier's 1 - p(given label | x) and, where the probe recorded logit margins, the probe's
AUM (Pleiss et al. 2020), each turned into a rank fraction and averaged (DESIGN §8). The count of wrong labels per
given class follows confident learning (Northcutt et al., 2021): with t_c the mean of p(c|x) over the samples
labelled c, a sample labelled c counts as wrong when p(c|x) < t_c and the classifier predicts another class, and,
where the probe recorded margins, its AUM is below 0 (over the probe's epochs its given label's logit was on
average below another class's). Flagged are exactly the samples counted: that measured a higher F1 than flagging
each class's count by score.
"""
from __future__ import annotations

import numpy as np
from scipy.stats import rankdata
from sklearn.metrics import precision_recall_fscore_support


def given_label_probability(losses: np.ndarray) -> np.ndarray:
    """p(given label | x) from each sample's cross-entropy against its given label."""
    return np.exp(-losses.astype(np.float64))


def suspect_scores(losses: np.ndarray, probe_margins: np.ndarray | None) -> np.ndarray:
    """Higher = more likely mislabeled: 1 - p(given label | x) under the final classifier, or, with each sample's
    mean probe margin, the mean of the two signals' rank fractions, in (0, 1].

    The two err on different samples: the final classifier, trained with the noisy samples down-weighted, is
    close to out-of-sample on them but has fitted some; the probe's margins show which labels the network only
    learned late, whatever the final fit."""
    unlikely = 1.0 - given_label_probability(losses)
    if probe_margins is None:
        return unlikely
    return (rankdata(unlikely) + rankdata(-probe_margins)) / (2 * len(losses))


def class_thresholds(p_given: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """t_c: the mean p(c|x) over the samples labelled c (0 for a class without samples)."""
    sums = np.bincount(labels, weights=p_given)
    counts = np.bincount(labels)
    return np.divide(sums, counts, out=np.zeros_like(sums), where=counts > 0)


def flag_wrong_labels(losses: np.ndarray, labels: np.ndarray, predicts_other: np.ndarray,
                      probe_margins: np.ndarray | None) -> np.ndarray:
    """The samples whose given label looks wrong: p(given|x) below their class's t_c, another class predicted
    (`predicts_other`) and,
    with the probe's mean margins, a negative one. The final classifier alone over-counts the clean samples it has
    not learned; the probe, which fitted them, disagrees on those (DESIGN §8)."""
    p_given = given_label_probability(losses)
    flagged = (p_given < class_thresholds(p_given, labels)[labels]) & predicts_other
    return flagged if probe_margins is None else flagged & (probe_margins < 0)


def flagged_scores(flagged: np.ndarray, mislabeled: np.ndarray) -> dict[str, float]:
    """Precision, recall and F1 of the flagged set against the samples known to be mislabeled."""
    precision, recall, f1, _ = precision_recall_fscore_support(mislabeled, flagged, average="binary",
                                                               zero_division=0)
    return {"flagged_precision": float(precision), "flagged_recall": float(recall), "flagged_f1": float(f1)}


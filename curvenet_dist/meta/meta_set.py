"""Where the allocate stage's clean, balanced meta set comes from (`meta.source`)."""
from __future__ import annotations

import numpy as np

from curvenet_dist.config import ConfigError, MetaConfig
from curvenet_dist.curves.features import lowest_loss_rows
from curvenet_dist.curves.store import CurveStore
from curvenet_dist.data.datasets import Splits
from curvenet_dist.data.sample_table import DataError, SampleTable


def select_meta_set(config: MetaConfig, splits: Splits, store: CurveStore) -> SampleTable:
    if config.source == "carved":
        table = splits.carved_meta
        if len(table) == 0:
            raise ConfigError("meta.source='carved' but bias.meta_per_class=0 carved no meta set; set "
                              "bias.meta_per_class, or use meta.source=split or meta.source=lowest_loss")
    elif config.source == "split":
        table = splits.provided_meta
        if table is None or len(table) == 0:
            raise ConfigError("meta.source='split' but the dataset has no meta split (meta.csv); use "
                              "meta.source=carved or meta.source=lowest_loss")
    else:
        table = splits.train.select(lowest_loss_rows(store, config.per_class))
    counts = np.bincount(table.labels, minlength=splits.num_classes)
    empty = [splits.class_names[c] for c in np.flatnonzero(counts == 0)]
    if empty:
        raise DataError(f"the meta set (meta.source={config.source}) has no samples of class(es) {', '.join(empty)}; "
                        f"every class needs meta samples")
    return table

"""Where the allocate stage's clean, balanced meta set comes from (`meta.source`)."""
from __future__ import annotations

import numpy as np

from curvenet_dist.config import ConfigError, MetaConfig
from curvenet_dist.curves.features import lowest_loss_rows
from curvenet_dist.curves.store import CurveStore
from curvenet_dist.data.datasets import Splits
from curvenet_dist.data.sample_table import DataError, SampleTable


def _carved(config: MetaConfig, splits: Splits, store: CurveStore | None) -> SampleTable:
    if len(splits.carved_meta) == 0:
        raise ConfigError("meta.source='carved' but bias.meta_per_class=0 carved no meta set; set "
                          "bias.meta_per_class, or use meta.source=split or meta.source=lowest_loss")
    return splits.carved_meta


def _split(config: MetaConfig, splits: Splits, store: CurveStore | None) -> SampleTable:
    if splits.provided_meta is None or len(splits.provided_meta) == 0:
        raise ConfigError("meta.source='split' but the dataset has no meta split (meta.csv); use "
                          "meta.source=carved or meta.source=lowest_loss")
    return splits.provided_meta


def _lowest_loss(config: MetaConfig, splits: Splits, store: CurveStore | None) -> SampleTable:
    if store is None:
        raise ConfigError("meta.source='lowest_loss' ranks samples by their probe losses; set allocate.probe_dir to "
                          "the probe run folder, or use meta.source=carved or meta.source=split")
    return splits.train.select(lowest_loss_rows(store, config.per_class))


META_SOURCES = {"carved": _carved, "split": _split, "lowest_loss": _lowest_loss}


def select_meta_set(config: MetaConfig, splits: Splits, store: CurveStore | None) -> SampleTable:
    """The meta set `config.source` names (config has checked it is one of META_SOURCES), with every class in it."""
    table = META_SOURCES[config.source](config, splits, store)
    counts = np.bincount(table.labels, minlength=splits.num_classes)
    empty = [splits.class_names[c] for c in np.flatnonzero(counts == 0)]
    if empty:
        raise DataError(f"the meta set (meta.source={config.source}) has no samples of class(es) {', '.join(empty)}; "
                        f"every class needs meta samples")
    return table

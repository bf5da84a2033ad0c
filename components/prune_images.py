"""KFP component `prune_images`: the prediction log's kept images past their retention deleted."""

# No `from __future__ import annotations` here: KFP reads the real annotation objects.

from typing import NamedTuple

from components import visionops_component


@visionops_component
def prune_images(
    log_location: str = "",
    retention_days: int = -1,
) -> NamedTuple("PruneOutputs", [("days", int), ("images", int)]):  # type: ignore[valid-type]
    """Delete the request images the predictor kept (`images/dt=<day>/`) of every UTC day older
    than `retention_days` (negative: `VISIONOPS_LOG_IMAGES_RETENTION_DAYS`; 0: keep forever),
    whole days at a time; records are never touched. Running it again changes nothing.

    `log_location`: s3://bucket/prefix or a folder; empty: the configured log store.
    """
    from collections import namedtuple

    from visionops.bootstrap import bootstrap

    settings = bootstrap()
    from visionops.monitoring.image_retention import prune_images as prune
    from visionops.monitoring.log_layout import open_log

    days = retention_days if retention_days >= 0 else settings.log_images_retention_days
    summary = prune(open_log(log_location), days)
    print(
        f"deleted {summary.objects_deleted} images of {len(summary.days_deleted)} days before "
        f"{summary.cutoff} ({', '.join(summary.days_deleted) or 'none'}); "
        f"kept {len(summary.days_kept)} days"
    )
    return namedtuple("PruneOutputs", ["days", "images"])(
        len(summary.days_deleted), summary.objects_deleted
    )

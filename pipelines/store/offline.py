"""The offline-table contract: one home for its columns, partitions, Arrow schema and paths.

Every engine writes, and Feast reads, one table per feature view at
``settings.offline_path/<view>/``: the view's join key, ``event_timestamp``,
``created_timestamp`` and one column per feature, timestamps in microseconds UTC
(Spark 4 rejects nanoseconds), partitioned by the UTC date of ``event_timestamp``
(``event_date=YYYY-MM-DD``). The raw event log shares the partition column.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import pyarrow as pa
import pyarrow.parquet as pq

from features import spec

if TYPE_CHECKING:  # annotations only: the event-log codecs import this module, and need no settings
    from conf.settings import Settings

EVENT_TIMESTAMP = "event_timestamp"
CREATED_TIMESTAMP = "created_timestamp"
PARTITION = "event_date"  # day partitions of each offline table and of the event log (UTC date of the event time)
EMPTY_PARTITION = "1970-01-01"  # where an empty table's file lives, so engines' partition overwrites never meet it

ARROW_TYPES: dict[str, pa.DataType] = {  # spec dtype -> Arrow type, for every table Kairos writes
    "int64": pa.int64(),
    "float64": pa.float64(),
    "string": pa.string(),
    "bool": pa.bool_(),
    "timestamp": pa.timestamp("us", tz="UTC"),
    "array<string>": pa.list_(pa.string()),
}


def offline_table_path(settings: Settings, view: spec.FeatureView) -> Path:
    return settings.offline_path / view.name


class Column(NamedTuple):
    name: str
    dtype: str  # a spec dtype (ARROW_TYPES' keys)
    nullable: bool


def offline_columns(view: spec.FeatureView) -> list[Column]:
    """A view's offline table: key and timestamps (never null), then the spec's features. Every engine's schema
    of the table (Arrow here, Spark in :mod:`pipelines.spark.schema`) is built from this list."""
    return [
        Column(view.entity.join_key, view.entity.dtype, False),
        Column(EVENT_TIMESTAMP, "timestamp", False),
        Column(CREATED_TIMESTAMP, "timestamp", False),
        *(Column(f.name, f.dtype, f.nullable) for f in view.features),
    ]


def offline_schema(view: spec.FeatureView) -> pa.Schema:
    """The Arrow schema of a view's offline table (:func:`offline_columns`)."""
    return pa.schema([pa.field(c.name, ARROW_TYPES[c.dtype], nullable=c.nullable) for c in offline_columns(view)])


def ensure_offline_table(settings: Settings, view: spec.FeatureView) -> Path:
    """An empty table (in a partition of its own, so engines' partition overwrites never meet it)."""
    path = offline_table_path(settings, view)
    if not path.exists() or not any(path.rglob("*.parquet")):
        empty = path / f"{PARTITION}={EMPTY_PARTITION}"
        empty.mkdir(parents=True, exist_ok=True)
        pq.write_table(offline_schema(view).empty_table(), empty / "empty.parquet", coerce_timestamps="us")
    return path

"""Readers: each raw source -> one events table (`Events`) that `prepare` turns into a dataset.

The table has one row per behaviour, in the order of the source file (that order is the tie key for
equal timestamps), with columns
    user, item, category   pandas Categorical of raw ids as strings
    timestamp              int64
    label                  int8 0/1, only for explicit sources (MovieLens, events with a label)
    <sparse features>      Categorical of strings, declared in `Events.sparse`
    <dense features>       float32 (float64 from the MovieLens, Taobao and Amazon readers), declared in
                           `Events.dense`
Ids are kept as categoricals so a large file costs a few bytes per row, not a Python string each.

Every reader raises `SourceError` naming the file, the line and the field of the first bad value
(also for bytes that are not UTF-8, integers beyond int64 and files that are not what they claim);
rows it drops on purpose (truncated last line, out-of-window timestamps, ...) are counted in
`Events.stats`. Formats and rules are in docs/data.md.

One module per source: `movielens`, `taobao`, `amazon`, `events` (generic CSV/TSV/Parquet and
in-memory tables); `table` holds `Events` and `SourceError`, `validate` the checks and conversions
they share.
"""

from din_export.sources.amazon import read_amazon
from din_export.sources.events import events_from_frame, read_events
from din_export.sources.movielens import read_movielens
from din_export.sources.table import CHUNK_ROWS, Events, SourceError
from din_export.sources.taobao import TAOBAO_BEHAVIOURS, read_taobao

__all__ = [
    "CHUNK_ROWS",
    "TAOBAO_BEHAVIOURS",
    "Events",
    "SourceError",
    "events_from_frame",
    "read_amazon",
    "read_events",
    "read_movielens",
    "read_taobao",
]

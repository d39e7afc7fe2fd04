"""Arrow-vectorised encoding: a batch of request rows as Arrow columns -> the model inputs `Scorer.encode`
would make of the same rows as dicts, without building the dicts. din-score's Parquet input and
din_runtime.spark use it; a batch it cannot take (a null, a float id, a missing or mistyped column,
histories of a row with different lengths, a dense value not finite in float32) is left to the row
path, whose checks name the row and the field. Needs pyarrow (the `parquet` or `spark` extra).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from din_runtime.features import OOV_INDEX, Padding
from din_runtime.manifest import Manifest

if TYPE_CHECKING:
    import pyarrow as pa


class ArrowEncoder:
    """A model's vocabularies as Arrow arrays (ids) and their indices, and `inputs(batch)`."""

    def __init__(self, manifest: Manifest) -> None:
        import pyarrow as pa

        self.manifest = manifest
        self.vocabs = {name: (pa.array(list(vocab), type=pa.string()),
                              np.fromiter(vocab.values(), dtype=np.int64, count=len(vocab)))
                       for name, vocab in manifest.vocabs.items()}

    def inputs(self, batch: pa.RecordBatch) -> dict[str, np.ndarray] | None:
        """The model inputs of `batch` as `Scorer.encode` computes them from its rows; None when a value
        needs encode's row-by-row checks (see the module docstring). Most batches have none."""
        import pyarrow as pa
        import pyarrow.compute as pc

        m = self.manifest
        if not _columns_fit(m, batch.schema) or not valid_text(batch, [*(n for n, _ in m.spec.id_fields),
                                                                        *m.histories]):
            return None
        arrays: dict[str, np.ndarray] = {}

        def ids(values: pa.Array, vocab: str) -> np.ndarray | None:
            if values.null_count or not (pa.types.is_string(values.type) or pa.types.is_large_string(values.type)
                                         or pa.types.is_integer(values.type)):
                return None
            keys, index = self.vocabs[vocab]
            found = pc.index_in(values.cast(pa.string()), value_set=keys)
            position = found.fill_null(-1).to_numpy(zero_copy_only=False)
            return np.where(position < 0, OOV_INDEX, index[position])

        for name, vocab in m.spec.id_fields:
            found = ids(batch.column(name), vocab)
            if found is None:
                return None
            arrays[name] = found
        lists = [batch.column(h) for h in m.histories]
        if any(h.null_count for h in lists):
            return None
        lengths = pc.list_value_length(lists[0]).to_numpy(zero_copy_only=False).astype(np.int64)
        if any(not np.array_equal(pc.list_value_length(h).to_numpy(zero_copy_only=False), lengths)
               for h in lists[1:]):
            return None
        padding = Padding.of(lengths, m.max_len)
        kept = padding.kept
        # The most recent `max_len` items of each row (older ones are dropped unread, as encode drops them).
        take = np.repeat(np.cumsum(lengths) - kept, kept) + padding.cols
        for b, column in zip(m.behaviour, lists, strict=True):
            found = ids(pc.list_flatten(column).take(pa.array(take)), b.vocab)
            if found is None:
                return None
            arrays[b.history] = padding.pad(found)
        arrays["hist_len"] = kept
        if m.dense:
            dense = []
            for name in m.dense:
                column = batch.column(name)
                if column.null_count:
                    return None
                with np.errstate(over="ignore"):
                    # safe=False: an integer beyond 2**53 becomes the nearest double, as float() makes it
                    values = column.cast(pa.float64(), safe=False).to_numpy(zero_copy_only=False).astype(np.float32)
                if not np.isfinite(values).all():
                    return None
                dense.append(values)
            arrays["dense"] = np.stack(dense, axis=1)
        return {name: arrays[name] for name in m.inputs}


def _columns_fit(m: Manifest, schema: pa.Schema) -> bool:
    """Every request field is a column of a type `inputs` reads (ids: any type, checked per column)."""
    import pyarrow as pa

    names = set(schema.names)
    if not {name for name, _ in m.spec.id_fields} | set(m.histories) | set(m.dense) <= names:
        return False
    if not all(pa.types.is_list(schema.field(h).type) or pa.types.is_large_list(schema.field(h).type)
               for h in m.histories):
        return False
    return all(pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t)
               for t in (schema.field(name).type for name in m.dense))


def decimals_as_doubles(column: pa.Array) -> pa.Array:
    """A decimal column as doubles, any other as it is: the row path's encoder takes a number, and a
    Decimal object is none."""
    import pyarrow as pa

    return column.cast(pa.float64()) if pa.types.is_decimal(column.type) else column


def valid_text(batch: pa.RecordBatch, names: list[str]) -> bool:
    """The string data of these columns is UTF-8 (a Parquet writer may store other bytes, which would look up
    as unseen ids here; the row path names the row and the field instead)."""
    import pyarrow as pa

    try:
        for name in names:
            batch.column(name).validate(full=True)
    except pa.ArrowInvalid:
        return False
    return True


def oov_per_row(manifest: Manifest, arrays: dict[str, np.ndarray]) -> np.ndarray:
    """Unseen ids per row of encoded `arrays` (padding is index 0, so only kept history items count)."""
    count = np.zeros(len(arrays["hist_len"]), dtype=np.int32)
    for name in manifest.inputs:
        if manifest.vocab_of(name) is not None:
            unseen = arrays[name] == OOV_INDEX
            count += unseen if unseen.ndim == 1 else unseen.sum(axis=1, dtype=np.int32)
    return count


def oov_per_field(manifest: Manifest, arrays: dict[str, np.ndarray]) -> dict[str, int]:
    """Unseen ids per id field of encoded `arrays`, keyed and ordered as `Encoded.oov`."""
    names = [name for name, _ in manifest.spec.id_fields] + list(manifest.histories)
    return {name: int(np.count_nonzero(arrays[name] == OOV_INDEX)) for name in names}

"""The exceptions din_runtime raises: one class per kind of problem, so callers can react to each."""

from __future__ import annotations


class DinRuntimeError(Exception):
    """Base class of every error din_runtime raises on purpose."""


class ModelDirError(DinRuntimeError):
    """The model directory is missing, empty, or not a din model directory at all."""


class ManifestError(DinRuntimeError):
    """manifest.json or a vocabulary file is malformed, inconsistent or points outside the directory."""


class SchemaError(ManifestError, ValueError):
    """A feature spec (schema JSON) or a vocabulary file is malformed or inconsistent; the message names the field."""


class IntegrityError(DinRuntimeError):
    """model.onnx is not the file the manifest describes (hash, external data, inputs, unloadable)."""


class DeviceError(DinRuntimeError):
    """The requested execution device is not available in this onnxruntime build."""


class InputError(DinRuntimeError, ValueError):
    """A request row or an input array is invalid. `row` is its index (None: not row-specific)."""

    def __init__(self, reason: str, row: int | None = None, field: str | None = None) -> None:
        self.reason = reason
        self.row = row
        self.field = field
        where = []
        if row is not None:
            where.append(f"row {row}")
        if field is not None:
            where.append(f"field {field!r}")
        super().__init__(f"{', '.join(where)}: {reason}" if where else reason)

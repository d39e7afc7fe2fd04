"""din_runtime: score exported DIN models with numpy and onnxruntime only (never torch).

    from din_runtime import Scorer
    scorer = Scorer.load("models/demo")
    scorer.score([{"user_id": "196", ..., "hist_item_id": ["51", "86"], ...}])

See docs/runtime.md for the API, the `din-score` CLI, the input formats and the errors.
"""

from din_runtime.encode import Encoded
from din_runtime.errors import (
    DeviceError,
    DinRuntimeError,
    InputError,
    IntegrityError,
    ManifestError,
    ModelDirError,
    SchemaError,
)
from din_runtime.features import Features, FeatureSpec
from din_runtime.manifest import Manifest, load_manifest
from din_runtime.metrics import auc, gauc, logloss
from din_runtime.scorer import Scorer

__version__ = "0.1.0"

__all__ = [
    "DeviceError", "DinRuntimeError", "Encoded", "FeatureSpec", "Features", "InputError", "IntegrityError", "Manifest",
    "ManifestError", "ModelDirError", "SchemaError", "Scorer", "auc", "gauc", "load_manifest", "logloss",
]

"""Training configuration beyond the defaults: the presets shipped in din_export/presets/ (`--config`),
`--set` overrides, and the order in which they combine."""

from __future__ import annotations

import json
from pathlib import Path

import din_export
from din_export.errors import OptionError
from din_export.model import ModelConfig
from din_export.train import TrainConfig

# Package data (pyproject.toml): the presets travel in the wheel, wherever it is installed.
PRESETS_DIR = Path(din_export.__file__).parent / "presets"


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESETS_DIR.glob("*.json"))


def load_preset(name_or_path: str) -> tuple[ModelConfig, TrainConfig, str]:
    """A preset name (din_export/presets/<name>.json), or a path to such a file -> (model config, train
    config, description)."""
    path = Path(name_or_path)
    if not path.is_file():
        if "/" in name_or_path or name_or_path.endswith(".json"):
            raise ValueError(f"preset file {name_or_path} does not exist")
        path = PRESETS_DIR / f"{name_or_path}.json"
        if not path.is_file():
            if not preset_names():
                raise ValueError(f"unknown preset {name_or_path!r}: this din_export has no presets in "
                                 f"{PRESETS_DIR} (an install without its package data); pass a preset's path")
            raise ValueError(f"unknown preset {name_or_path!r}; choose from {preset_names()} or pass a path")
    try:
        doc = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"preset {path}: not valid JSON: {e}") from e
    if not isinstance(doc, dict) or set(doc) - {"description", "model", "train"}:
        raise ValueError(f"preset {path}: expected an object with keys description, model, train")
    return ModelConfig.from_dict(doc.get("model", {})), TrainConfig.from_dict(doc.get("train", {})), \
        str(doc.get("description", ""))


def parse_sets(sets: tuple[str, ...]) -> tuple[dict, dict]:
    """`--set model.embed_dim=16 --set train.weight_decay=1e-6` -> (model overrides, train overrides)."""
    out: dict[str, dict] = {"model": {}, "train": {}}
    for item in sets:
        key, eq, text = item.partition("=")
        section, dot, name = key.partition(".")
        if not eq or not dot or section not in out:
            raise OptionError(f"--set {item!r}: expected model.FIELD=VALUE or train.FIELD=VALUE")
        try:
            out[section][name] = json.loads(text)
        except json.JSONDecodeError:
            out[section][name] = text
    return out["model"], out["train"]


def resolve_configs(preset: str | None, saved: dict | None, model_flags: dict, train_flags: dict,
                    sets: tuple[str, ...]) -> tuple[ModelConfig, TrainConfig]:
    """Defaults < preset (or, resuming without one, the run's saved config) < --set < named flags."""
    if preset:
        model_cfg, train_cfg, _ = load_preset(preset)
        model_d, train_d = model_cfg.to_dict(), train_cfg.to_dict()
    elif saved:
        model_d, train_d = dict(saved["model"]), dict(saved["train"])
    else:
        model_d, train_d = ModelConfig().to_dict(), TrainConfig().to_dict()
    set_model, set_train = parse_sets(sets)
    model_d.update(set_model)
    train_d.update(set_train)
    model_d.update({k: v for k, v in model_flags.items() if v is not None})
    train_d.update({k: v for k, v in train_flags.items() if v is not None})
    return ModelConfig.from_dict(model_d), TrainConfig.from_dict(train_d)

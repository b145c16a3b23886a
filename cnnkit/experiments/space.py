"""A search space: SPACE.yaml maps config keys to distributions, validated before any trial runs.

    optim.lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}
    train.batch_size: {type: int, low: 64, high: 256, step: 64}
    optim.name: {type: categorical, choices: [adam, adamw]}

Each type is a registry entry (SPACE_TYPES) that checks its fields and asks an Optuna trial for a value.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from cnnkit.config import check_plain_data
from cnnkit.errors import ConfigError
from cnnkit.experiments.grid import cell_config, value_text

_SCALARS = (str, int, float, bool, type(None))


@dataclass(frozen=True)
class FloatParam:
    low: float
    high: float
    log: bool = False
    step: float | None = None

    def suggest(self, trial, key: str) -> Any:
        return trial.suggest_float(key, self.low, self.high, log=self.log, step=self.step)

    def probes(self) -> list:
        return [self.low, self.high]


@dataclass(frozen=True)
class IntParam:
    low: int
    high: int
    log: bool = False
    step: int = 1

    def suggest(self, trial, key: str) -> Any:
        return trial.suggest_int(key, self.low, self.high, log=self.log, step=self.step)

    def probes(self) -> list:
        return [self.low, self.high]


@dataclass(frozen=True)
class CategoricalParam:
    choices: tuple  # scalars as they are; a list choice as its YAML text (Optuna stores scalars only)

    def suggest(self, trial, key: str) -> Any:
        return trial.suggest_categorical(key, list(self.choices))

    def probes(self) -> list:
        return list(self.choices)


def _number(entry: dict, field: str, where: str, kind: type) -> Any:
    value = entry.get(field)
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if kind is int:
        ok = ok and float(value).is_integer()
    if not ok:
        raise ConfigError(f"{where}: {field} must be {'an integer' if kind is int else 'a number'} "
                          f"(got {value!r})")
    return kind(value)


def _float(entry: dict, where: str) -> FloatParam:
    low, high = _number(entry, "low", where, float), _number(entry, "high", where, float)
    log = _flag(entry, where)
    step = _number(entry, "step", where, float) if entry.get("step") is not None else None
    _check_range(low, high, log, step, where)
    return FloatParam(low, high, log, step)


def _int(entry: dict, where: str) -> IntParam:
    low, high = _number(entry, "low", where, int), _number(entry, "high", where, int)
    log = _flag(entry, where)
    step = _number(entry, "step", where, int) if entry.get("step") is not None else 1
    _check_range(low, high, log, step, where)
    return IntParam(low, high, log, step)


def _categorical(entry: dict, where: str) -> CategoricalParam:
    choices = entry.get("choices")
    if not isinstance(choices, list) or not choices:
        raise ConfigError(f"{where}: choices must be a non-empty list, e.g. choices: [adam, adamw]")
    stored = tuple(c if isinstance(c, _SCALARS) else value_text(c) for c in choices)
    if len(set(map(repr, stored))) != len(stored):
        raise ConfigError(f"{where}: a choice is listed twice; list each once")
    return CategoricalParam(stored)


def _flag(entry: dict, where: str) -> bool:
    log = entry.get("log", False)
    if not isinstance(log, bool):
        raise ConfigError(f"{where}: log must be true or false (got {log!r})")
    return log


def _check_range(low, high, log: bool, step, where: str) -> None:
    if low > high:
        raise ConfigError(f"{where}: low {low} is above high {high}; swap them")
    if log and low <= 0:
        raise ConfigError(f"{where}: log: true needs low > 0 (got {low})")
    if step is not None and (step <= 0 or (log and step != 1)):
        raise ConfigError(f"{where}: step must be positive, and cannot be combined with log: true")


# type name → (parser, the fields it takes)
SPACE_TYPES: dict[str, tuple] = {
    "float": (_float, {"low", "high", "log", "step"}),
    "int": (_int, {"low", "high", "log", "step"}),
    "categorical": (_categorical, {"choices"}),
}


def parse_space(raw: Any, source: str) -> dict[str, Any]:
    """{key: entry} → {key: a *Param}; every problem one ConfigError naming the key."""
    if not isinstance(raw, dict) or not raw:
        raise ConfigError(f"{source}: expected a mapping of config keys to distributions, e.g. "
                          "optim.lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}")
    space = {}
    for key, entry in raw.items():
        where = f"{source}: {key}"
        if not isinstance(key, str) or "." not in key:
            raise ConfigError(f"{where}: keys are dotted config keys such as optim.lr")
        if not isinstance(entry, dict):
            raise ConfigError(f"{where}: expected a mapping such as {{type: float, low: 0.001, high: 0.01}}")
        kind = entry.get("type")
        if kind not in SPACE_TYPES:
            raise ConfigError(f"{where}: unknown distribution type {kind!r}; choose one of: {', '.join(SPACE_TYPES)}")
        parser, fields = SPACE_TYPES[kind]
        unknown = sorted(set(entry) - fields - {"type"})
        if unknown:
            raise ConfigError(f"{where}: unknown field {unknown[0]!r} for type {kind}; it takes: "
                              f"{', '.join(sorted(fields))}")
        space[key] = parser(entry, where)
    return space


def read_space(path: str | Path) -> tuple[dict[str, Any], dict]:
    """The parsed space and the file's data as read (for the study's plan)."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: space file not found; pass a YAML file mapping keys to distributions") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read it ({exc}); pass a UTF-8 YAML file") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: malformed YAML ({' '.join(str(exc).split())[:200]}); fix the syntax") from None
    check_plain_data(raw, str(path))
    return parse_space(raw, str(path)), raw


def validate_space(space: dict[str, Any], config: str | Path, overrides: list[str], source: str) -> None:
    """Every key exists and takes every edge of its range (and every choice): checked on the config."""
    for key, param in space.items():
        for value in param.probes():
            text = f"{key}={value if isinstance(value, str) else value_text(value)}"
            try:
                cell_config(config, overrides, [text], flag=f"{source}: {key}:")
            except ConfigError as exc:
                message = str(exc).replace(f"{source}: {key}: {text}:", f"{source}: {key} (value {value!r}):")
                raise ConfigError(message) from None

"""A sweep's plan: `--grid KEY=V1,V2` axes × `--seeds`, each cell validated before anything runs.

Values stay the text the user wrote (YAML scalars or flow lists): a cell's overrides are exactly
`KEY=TEXT`, as `--set` would take them, so what ran is what was asked, digit for digit.
"""

from __future__ import annotations

import itertools
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from cnnkit.config import Config, apply_overrides, load_config
from cnnkit.errors import CnnkitError, ConfigError, one_line

SEED_KEY = "train.seed"


@dataclass(frozen=True)
class Axis:
    key: str  # a dotted config key, e.g. optim.lr
    values: tuple[str, ...]  # the texts after '=', e.g. ("0.003", "0.006")


@dataclass(frozen=True)
class Cell:
    """One run of a sweep: a setting (one value per axis) and a seed."""

    setting: dict[str, str] = field(hash=False)
    seed: int = 0
    name: str = ""  # its run folder's name under runs/NAME/

    @property
    def overrides(self) -> list[str]:
        return [f"{k}={v}" for k, v in self.setting.items()] + [f"{SEED_KEY}={self.seed}"]

    @property
    def params(self) -> dict[str, str]:
        """The cell as an Optuna trial's fixed params: every axis, and the seed."""
        return {**self.setting, SEED_KEY: str(self.seed)}


def split_values(text: str) -> list[str]:
    """'0.1,0.2' → ['0.1', '0.2']; commas inside [...], {...} or quotes belong to one value."""
    parts, depth, quote, current = [], 0, "", []
    for ch in text:
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append("".join(current).strip())
            current = []
            continue
        current.append(ch)
    parts.append("".join(current).strip())
    return parts


def parse_grid(items: list[str] | tuple[str, ...]) -> list[Axis]:
    """Each `--grid KEY=V1,V2,...` as an axis; one clear ConfigError for an empty or repeated one."""
    axes: list[Axis] = []
    for item in items:
        key, sep, rest = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"--grid {item!r}: expected KEY=V1,V2,..., e.g. --grid optim.lr=0.003,0.006")
        values = split_values(rest) if rest.strip() else []
        if not values or any(v == "" for v in values):
            raise ConfigError(f"--grid {item}: empty value in the list; give one or more values, e.g. "
                              f"--grid {key}=0.1,0.2")
        if len(set(values)) != len(values):
            repeated = next(v for v in values if values.count(v) > 1)
            raise ConfigError(f"--grid {item}: the value {repeated} is listed twice; list each value once")
        if key == SEED_KEY:
            raise ConfigError(f"--grid {item}: seeds are their own axis; use --seeds {rest.strip()}")
        if key in (a.key for a in axes):
            raise ConfigError(f"--grid {key} is given twice; put all its values in one --grid {key}=V1,V2,...")
        axes.append(Axis(key, tuple(values)))
    return axes


def parse_seeds(text: str) -> list[int]:
    """'5' → [0, 1, 2, 3, 4]; '0,3,7' → [0, 3, 7]."""
    text = text.strip()
    try:
        if "," not in text:
            count = int(text)
            if count < 1:
                raise ValueError
            return list(range(count))
        seeds = [int(s) for s in text.split(",")]
    except ValueError:
        raise ConfigError(f"--seeds {text!r}: expected a count (e.g. 5 for seeds 0-4) or a list (e.g. 0,3,7)") from None
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"--seeds {text}: a seed is listed twice; list each seed once")
    return seeds


def cells(axes: list[Axis], seeds: list[int]) -> list[Cell]:
    """The cartesian product of the axes, × seeds; settings in grid order, seeds innermost."""
    settings = [dict(zip([a.key for a in axes], combo, strict=True))
                for combo in itertools.product(*(a.values for a in axes))]
    labels = _unique([setting_label(s) for s in settings])
    return [Cell(setting, seed, f"{label}-seed{seed}" if label else f"seed{seed}")
            for setting, label in zip(settings, labels, strict=True) for seed in seeds]


def setting_label(setting: dict[str, str]) -> str:
    """'lr=0.003,batch_size=64': each key's last part (the whole key where two would clash); a key into
    a list keeps the list's name and the position: optim.groups.0.lr → 'groups.0.lr'."""
    short = [_short_key(k) for k in setting]
    names = [s if short.count(s) == 1 else k for s, k in zip(short, setting, strict=True)]
    return ",".join(f"{n}={_safe(v)}" for n, v in zip(names, setting.values(), strict=True))


def _short_key(key: str) -> str:
    parts = key.split(".")
    positions = [i for i, part in enumerate(parts) if part.isdigit()]
    return ".".join(parts[positions[0] - 1:]) if positions and positions[0] > 0 else parts[-1]


def _safe(text: str) -> str:
    # A folder name: no slashes, spaces or brackets (TensorBoard shows it as the run's name).
    return re.sub(r"[^A-Za-z0-9._+=-]+", "_", text).strip("_") or "_"


def _unique(labels: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for label in labels:
        seen[label] = seen.get(label, 0) + 1
        out.append(label if seen[label] == 1 else f"{label}~{seen[label]}")
    return out


def value_text(value) -> str:
    """A Python value as the text `--set KEY=TEXT` reads back as the same value."""
    if isinstance(value, float):
        text = repr(value)
        # PyYAML (YAML 1.1) reads 1e-05 as a string; 1.0e-05 is a float.
        mantissa, e, exponent = text.partition("e")
        if e and "." not in mantissa:
            text = f"{mantissa}.0e{exponent if exponent[0] in '+-' else '+' + exponent}"
        elif e and exponent[0] not in "+-":
            text = f"{mantissa}e+{exponent}"
        return text
    return json.dumps(value) if not isinstance(value, str) else value


def parse_value(text: str):
    """The YAML value a cell's text stands for (what the config got): for plots and tables."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


# ---------------------------------------------------------------------------------------- validation


def cell_config(config: str | Path, overrides: list[str], cell_overrides: list[str], flag: str = "--grid") -> Config:
    """The config a cell trains: file < --set < the cell's values; a bad value names its `flag`."""
    try:
        cfg = load_config(config, [*overrides, *cell_overrides])
    except ConfigError as exc:
        message = str(exc)
        for text in cell_overrides:
            if message.startswith(f"--set {text}:"):
                message = f"{flag} {text}:" + message[len(f"--set {text}:"):]
        raise ConfigError(message) from None
    return cfg


def planned_config(base: dict, cell_overrides: list[str], output_dir: str | Path, flag: str) -> Config:
    """A trial's config from the plan's resolved base (the config file with --set, as it was when the
    experiment was planned) and the trial's values: a file edited since cannot change what runs."""
    import copy

    try:
        cfg = apply_overrides(copy.deepcopy(base), cell_overrides, "the experiment's planned config")
    except ConfigError as exc:
        raise ConfigError(str(exc).replace("--set ", f"{flag} ", 1)) from None
    cfg.output.dir = str(output_dir)
    return cfg


def check_buildable(config: Config, where: str) -> None:
    """Build the model and its optimisers on the meta device (no data): a bad combination fails now."""
    from cnnkit.build import check_model_builds

    try:
        check_model_builds(config)
    except CnnkitError as exc:
        raise ConfigError(f"{where}: {one_line(exc)}") from None
    except Exception as exc:  # a model constructor's own check (e.g. widths that do not fit)
        raise ConfigError(f"{where}: the model cannot be built: {one_line(exc)}") from None


def validate_cells(config: str | Path, overrides: list[str], plan: list[Cell]) -> list[Config]:
    """Every cell's config, or the first problem as one ConfigError: nothing runs on a half-valid grid."""
    configs = []
    built: set[str] = set()
    for cell in plan:
        cfg = cell_config(config, overrides, cell.overrides)
        # The model and optimiser groups depend on few keys; build each distinct one once.
        shape = json.dumps([cfg.model.model_dump(mode="json"), cfg.optim.model_dump(mode="json"),
                            cfg.data.grayscale, cfg.train.batch_size], sort_keys=True)
        if shape not in built:
            check_buildable(cfg, f"--grid cell {cell.name}")
            built.add(shape)
        configs.append(cfg)
    return configs

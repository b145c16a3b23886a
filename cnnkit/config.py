"""Typed run configuration: YAML → pydantic models, with `--set section.key=value` overrides.

Precedence is defaults < YAML < --set. Every problem becomes one `ConfigError` line naming the file
(or the --set), the dotted key, and what is allowed.
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from cnnkit.errors import ConfigError


def _is_mapping_annotation(annotation) -> bool:
    return annotation is dict or getattr(annotation, "__origin__", None) is dict


class Section(BaseModel):
    # Unknown keys are errors, never silently ignored: a typo must not train the wrong thing.
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_for_numbers(cls, value, info):
        # pydantic would read `epochs: true` as 1 and `lr: true` as 1.0; a bool there is a mistake.
        annotation = cls.model_fields[info.field_name].annotation
        kinds = (annotation, *getattr(annotation, "__args__", ()))
        if isinstance(value, bool) and bool not in kinds and (int in kinds or float in kinds):
            raise ValueError("must be a number, not true/false")
        return value

    @field_validator("*", mode="after")
    @classmethod
    def _numbers_in_kwargs(cls, value, info):
        # YAML 1.1 reads 1e-8 (no dot) as text; in free-form kwargs nothing else would convert it.
        if info.field_name == "kwargs" and isinstance(value, dict):
            return {k: _yaml_float(v) for k, v in value.items()}
        return value


class ModelConfig(Section):
    name: str = "lenet"
    # None = take it from the data (3 for RGB CIFAR-10, 1 for grayscale; 10 classes; 32×32).
    in_channels: Optional[int] = Field(default=None, ge=1)
    num_classes: Optional[int] = Field(default=None, ge=1)
    input_size: Optional[tuple[int, int]] = None
    kwargs: dict[str, Any] = Field(default_factory=dict)
    # torchvision:/timm: models: a 32×32 stem for their ImageNet one (cnnkit.models.stems; docs/stems.md).
    cifar_stem: bool = False

    @field_validator("name")
    @classmethod
    def _known_model(cls, name: str) -> str:
        # A registry name, or SOURCE:TARGET (torchvision:resnet18, timm:resnet18, mynets:ResNet18,
        # path/to/nets.py:ResNet18), checked for its spelling only: nothing is imported while a config
        # is read (a checkpoint's config must not run code; cnnkit.models.trust).
        from cnnkit.models import MODELS
        from cnnkit.models.external import name_problem

        if ":" in name:
            problem = name_problem(name)
            if problem is not None:
                raise ValueError(problem)
            return name
        if name not in MODELS:
            raise ValueError(f"unknown model '{name}'{_did_you_mean(name, MODELS)}; choose one of: "
                             f"{', '.join(MODELS)}, or name any model as module:Name, path/to/file.py:Name, "
                             "torchvision:NAME or timm:NAME")
        return name

    @field_validator("input_size")
    @classmethod
    def _positive_size(cls, size):
        if size is not None and min(size) < 1:
            raise ValueError("must be two positive integers [H, W]")
        return size


class DataConfig(Section):
    # cifar10: the real images (image folder or cifar-10-batches-py); cifar100; mnist and fashion_mnist
    # (1×28×28); imagefolder: the user's own pictures; stripes: the seed's 6×8 picture (cnnkit.data.datasets).
    dataset: str = "cifar10"
    # fine: CIFAR-100's 100 classes; coarse: its 20 superclasses. Other datasets have fine labels only.
    labels: Literal["fine", "coarse"] = "fine"
    root: Optional[str] = None
    download: bool = False
    cache_dir: Optional[str] = None
    val_split: int = Field(default=0, ge=0)
    # Picks which images are held out for validation. Separate from train.seed (and fixed by default)
    # so that a seed sweep compares its runs on one and the same validation set.
    split_seed: int = 0
    subset: Optional[int] = Field(default=None, ge=1)
    grayscale: bool = False
    augment: bool = False
    # Random translation: pad by crop_padding, crop back. zeros (the classic crop) or reflect (airbench's:
    # no black border for the model to learn about).
    crop_padding: int = Field(default=4, ge=0)
    pad_mode: Literal["zeros", "reflect"] = "zeros"
    hflip: bool = True
    # random: each image flips with p = 0.5 every epoch; alternate: each image flips on every other
    # epoch, starting from a random half (airbench), so consecutive epochs always see both sides.
    flip_mode: Literal["random", "alternate"] = "random"
    # Photometric jitter of the normalised images, one draw per image each epoch (the 2025 CIFAR-10
    # speedrun record's): shift every pixel by a brightness in [−brightness, brightness], then scale
    # by a contrast in [1 − contrast, 1 + contrast]. 0 = off (and no random draws are made).
    brightness: float = Field(default=0.0, ge=0)
    contrast: float = Field(default=0.0, ge=0, lt=1)
    # None = computed from the training images and written into the resolved config.
    mean: Optional[list[float]] = None
    std: Optional[list[float]] = None
    # [H, W] every image is brought to (cnnkit.data.pictures' rule: stretched, bilinear, antialiased);
    # None = the dataset's own (32×32 CIFAR, 28×28 MNIST), and 32×32 for an image folder. Last among the
    # keys, so that its check sees the augmentation settings above.
    input_size: Optional[tuple[int, int]] = None

    @field_validator("dataset")
    @classmethod
    def _known_dataset(cls, name: str) -> str:
        from cnnkit.data.datasets import DATASETS

        return _check_registry_name(name, DATASETS, "dataset")

    @field_validator("labels")
    @classmethod
    def _labels_the_dataset_has(cls, labels: str, info) -> str:
        from cnnkit.data.datasets import DATASETS

        dataset = info.data.get("dataset")
        if labels == "coarse" and dataset in DATASETS and DATASETS[dataset].coarse_classes is None:
            having = [name for name, entry in DATASETS.items() if entry.coarse_classes is not None]
            raise ValueError(f"coarse labels are superclasses, which {dataset} does not have; only "
                             f"{', '.join(having)} has them (its 20 superclasses): use labels: fine")
        return labels

    @field_validator("input_size")
    @classmethod
    def _size_the_data_can_take(cls, size, info):
        if size is None:
            return size
        if min(size) < 1:
            raise ValueError("must be two positive integers [H, W]")
        if info.data.get("dataset") == "stripes":
            raise ValueError("the seed's striped picture is 6×8 by definition; drop data.input_size")
        if max(size) > 4096:
            raise ValueError("at most 4096 pixels a side: cnnkit keeps every image in memory at this size")
        padding = info.data.get("crop_padding", 0)
        if info.data.get("augment") and info.data.get("pad_mode") == "reflect" and padding >= min(size):
            raise ValueError(f"data.crop_padding={padding} with data.pad_mode=reflect must be smaller than the "
                             f"{size[0]}×{size[1]} images (a mirror reaches at most {min(size) - 1} pixels); use "
                             f"data.crop_padding={min(size) - 1} or less, or data.pad_mode=zeros")
        return size


class ParamGroupConfig(Section):
    """Some of the model's parameters with an optimiser of their own (cnnkit.optim.registry)."""

    # Shell-style patterns over the names model.named_parameters() gives, e.g. "group*.conv*.weight";
    # a parameter goes to the first group one of whose patterns it matches.
    params: list[str] = Field(min_length=1)
    name: str
    lr: float = Field(gt=0)
    weight_decay: float = Field(default=0.0, ge=0)
    kwargs: dict[str, Any] = Field(default_factory=dict)
    # The schedule runs over this many epochs for this group, then holds its final value (e.g. a
    # whitening bias that should stop moving early); None = over the whole run.
    schedule_epochs: Optional[float] = Field(default=None, gt=0)
    # lr per image: the optimiser gets lr × train.batch_size, as if the loss were summed over the
    # batch (airbench's convention), so a change of batch size keeps the step per image the same.
    lr_per_image: bool = False

    @field_validator("name")
    @classmethod
    def _known_optimizer(cls, name: str) -> str:
        from cnnkit.optim.registry import OPTIMIZERS

        return _check_registry_name(name, OPTIMIZERS, "optimiser")


class OptimConfig(Section):
    # The optimiser of every trainable parameter that no entry of `groups` claims.
    name: str = "adam"
    lr: float = Field(default=1e-3, gt=0)
    weight_decay: float = Field(default=0.0, ge=0)
    kwargs: dict[str, Any] = Field(default_factory=dict)
    groups: list[ParamGroupConfig] = Field(default_factory=list)

    @field_validator("name")
    @classmethod
    def _known_optimizer(cls, name: str) -> str:
        from cnnkit.optim.registry import OPTIMIZERS

        return _check_registry_name(name, OPTIMIZERS, "optimiser")


class ScheduleConfig(Section):
    name: str = "constant"
    warmup_epochs: float = Field(default=0.0, ge=0)
    # The lr at the end of the schedule, as a fraction of optim.lr (cosine and onecycle).
    final_lr_ratio: float = Field(default=0.0, ge=0, le=1)

    @field_validator("name")
    @classmethod
    def _known_schedule(cls, name: str) -> str:
        from cnnkit.optim.registry import SCHEDULES

        return _check_registry_name(name, SCHEDULES, "schedule")


# torch.compile's modes, for train.compile.
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


class TrainConfig(Section):
    epochs: int = Field(default=10, ge=1)
    batch_size: int = Field(default=256, ge=1)
    eval_batch_size: int = Field(default=1024, ge=1)
    seed: int = 0
    device: str = "auto"
    deterministic: bool = False
    label_smoothing: float = Field(default=0.0, ge=0, lt=1)
    # Evaluate, select and save an exponential moving average of the weights (cnnkit.training.ema); e.g. 0.99.
    # 0 or null: no average.
    ema_decay: Optional[float] = Field(default=None, ge=0, lt=1)
    grad_clip: Optional[float] = Field(default=None, gt=0)
    # Forward and backward each batch in chunks of this many images, one optimiser step per batch (the
    # gradients add up to the whole batch's; BatchNorm sees each chunk alone: ghost batch norm): a
    # batch larger than the memory holds, or ghost BN's regularisation. Not a speed-up on the CPU
    # (scripts/bench_micro_batch.py: the fast model, fp32, 0.96-0.99x the whole batch's img/s).
    # None: the whole batch at once.
    micro_batch: Optional[int] = Field(default=None, ge=1)
    # auto: bf16 where the device computes it natively (a GPU of compute capability 8.0+, a CPU with
    # AVX512-BF16 or AMX), else fp32; the run's saved config records what it resolved to.
    precision: Literal["fp32", "bf16", "fp16", "auto"] = "fp32"
    # torch.compile the model: true (torch's default mode) or a mode by name. max-autotune times kernel
    # choices (minutes on a GPU, before the clock: train.warmup_steps); reduce-overhead replays CUDA graphs.
    compile: Union[bool, Literal[COMPILE_MODES]] = False
    channels_last: bool = False
    # When the training images are cropped, flipped and normalised (cnnkit.training.inputs): step, each
    # step for its batch; epoch, once an epoch for the whole split, kept on the device in the compute
    # dtype (a step is then one gather). The same numbers either way. auto: epoch on a GPU where the
    # split fits in a quarter of the free memory, else step.
    prepare: Literal["auto", "step", "epoch"] = "auto"
    # None = all cores.
    threads: Optional[int] = Field(default=None, ge=1)
    # Also measure test accuracy after every epoch (reported only, never used to pick best.pt).
    test_every_epoch: bool = False
    # The final test also with test-time augmentation, reported beside the plain figure: flip (the
    # image and its mirror), flip_shift (also ±1-pixel shifts, 10 views, cnnkit eval --tta-shift) or
    # flip_translate (airbench's: mirror and two diagonal 1-pixel moves, weighted; cnnkit.evaluation.evaluate).
    tta: Literal["none", "flip", "flip_shift", "flip_translate"] = "none"
    # A model with `init_from_data` (e.g. fast's whitening conv) is initialised from this many
    # training images before the first step of a new run.
    data_init_images: int = Field(default=5000, ge=1)
    # The loop syncs with the device only every this many steps: to check the loss is finite and to
    # update the progress view (the epoch's totals are reduced on the device).
    sync_every: int = Field(default=50, ge=1)
    # Steps run before the clock starts and then undone (cnnkit.training.warmup): torch.compile's
    # compilation and cuDNN's autotuning are timed apart from training. None: 3 with train.compile or
    # on a GPU, else 0.
    warmup_steps: Optional[int] = Field(default=None, ge=0)
    # Start a new run from these weights (a checkpoint's `model`: the average, with an EMA), with
    # this config's own fresh optimiser and schedule: a fine-tune. `cnnkit train --init-from X` sets it.
    init_from: Optional[str] = None
    # Under DDP, BatchNorm normalises over the global batch (cnnkit's all-reduce BatchNorm, over gloo or
    # NCCL) instead of each process's share. None = on under DDP when the model has BatchNorm.
    sync_bn: Optional[bool] = None
    # Also write each epoch's scalars and, at the end, the hparams with the final metrics as TensorBoard
    # events into the run folder (cnnkit.training.tensorboard; needs the tensorboard package).
    tensorboard: bool = False

    @field_validator("compile", mode="before")
    @classmethod
    def _compile_setting(cls, value):
        if isinstance(value, bool) or value in COMPILE_MODES:
            return value
        raise ValueError(f"must be true, false or a torch.compile mode ({', '.join(COMPILE_MODES)})")

    @field_validator("device")
    @classmethod
    def _device_syntax(cls, device: str) -> str:
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", device):
            raise ValueError("must be auto, cpu, cuda or cuda:N")
        return device


class OutputConfig(Section):
    dir: str = "runs"
    # None = the config file's name.
    name: Optional[str] = None


class Config(Section):
    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    output: OutputConfig = Field(default_factory=OutputConfig)

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


def _check_registry_name(name: str, registry: dict, kind: str) -> str:
    if name not in registry:
        hint = _did_you_mean(name, registry)
        raise ValueError(f"unknown {kind} '{name}'{hint}; choose one of: {', '.join(registry)}")
    return name


def _did_you_mean(word: str, options) -> str:
    close = difflib.get_close_matches(str(word), [str(o) for o in options], n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


_FLOAT_TEXT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def _yaml_float(value):
    return float(value) if isinstance(value, str) and _FLOAT_TEXT.fullmatch(value.strip()) else value


def parse_override(text: str) -> tuple[list[str], Any]:
    """'train.epochs=3' → (['train', 'epochs'], 3). Values are YAML scalars or flow lists/maps."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {text!r}: expected section.key=value, e.g. --set train.epochs=3")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except (yaml.YAMLError, RecursionError):
        value = raw  # not YAML: keep the literal string and let validation judge it
    check_plain_data(value, f"--set {text}", prefix=key.strip())
    return key.strip().split("."), value


def _apply_override(raw: dict, path: list[str], value: Any, origin: str) -> None:
    node = raw
    schema: type[BaseModel] | None = Config
    depth = 0
    while True:
        part = path[depth]
        is_last = depth == len(path) - 1
        fields = schema.model_fields if schema is not None else None
        if fields is not None and part not in fields:
            where = ".".join(path[:depth]) or "top level"
            raise ConfigError(
                f"{origin}: unknown key '{'.'.join(path[: depth + 1])}'{_did_you_mean(part, fields)}; "
                f"keys in {where}: {', '.join(fields)}"
            )
        if is_last:
            node[part] = value
            return
        annotation = fields[part].annotation if fields is not None else None
        item_schema = _list_item_schema(annotation)
        if item_schema is not None:
            # A list of sections (optim.groups): the next part is an entry's position, e.g.
            # optim.groups.0.lr, so that one group's setting can be swept like any other key.
            node, depth = _list_entry(node, part, path, depth, value, origin)
            if node is None:
                return
            schema = item_schema
            continue
        schema = annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None
        if fields is not None and schema is None and not _is_mapping_annotation(annotation):
            # e.g. --set train.epochs.x=3: epochs is a value, there is nothing below it.
            raise ConfigError(f"{origin}: '{'.'.join(path[: depth + 1])}' is a value, not a section; "
                              f"use --set {'.'.join(path[: depth + 1])}=VALUE")
        child = node.get(part)
        if child is None:
            child = {}
            node[part] = child
        elif not isinstance(child, dict):
            # The file's own value is wrong (e.g. `train: 3`); say so rather than silently replace it.
            raise ConfigError(f"{origin}: '{'.'.join(path[: depth + 1])}' in the config is "
                              f"{type(child).__name__} {child!r}, not a mapping; fix the file first")
        node = child
        depth += 1


def _list_item_schema(annotation) -> type[BaseModel] | None:
    """X for an annotation list[X] where X is a config section, else None."""
    if getattr(annotation, "__origin__", None) is not list:
        return None
    (item,) = getattr(annotation, "__args__", (None,))
    return item if isinstance(item, type) and issubclass(item, BaseModel) else None


def _list_entry(node: dict, part: str, path: list[str], depth: int, value: Any, origin: str):
    """Step from a list of sections into entry path[depth + 1]: (that entry, its depth), or
    (None, depth) once `value` has replaced the whole entry (`--set optim.groups.0={...}`)."""
    name = ".".join(path[: depth + 1])
    entries = node.get(part)
    if not isinstance(entries, list):
        raise ConfigError(f"{origin}: '{name}' has no entries in the config to index; write the whole "
                          f"list in the YAML file (or --set {name}=[...])")
    position = path[depth + 1]
    if not position.isdigit() or int(position) >= len(entries):
        raise ConfigError(f"{origin}: '{name}.{position}': {name} has {len(entries)} entries, so the part "
                          f"after '{name}.' is their position, 0 to {len(entries) - 1}")
    index = int(position)
    if depth + 1 == len(path) - 1:
        entries[index] = value
        return None, depth
    entry = entries[index]
    if not isinstance(entry, dict):
        raise ConfigError(f"{origin}: '{name}.{index}' in the config is {type(entry).__name__} "
                          f"{entry!r}, not a mapping; fix the file first")
    return entry, depth + 2


def _format_error(err: dict, source: str, overridden: dict[tuple, str]) -> str:
    loc = tuple(str(p) for p in err["loc"])
    key = ".".join(loc)
    # Name the --set that supplied the value, if one did, rather than the file.
    where = next((o for k, o in overridden.items() if loc[: len(k)] == k), source)
    if err["type"] == "extra_forbidden":
        parent = _schema_at(loc[:-1])
        allowed = list(parent.model_fields) if parent else []
        return (
            f"{where}: unknown key '{key}'{_did_you_mean(loc[-1], allowed)}; "
            f"allowed in {'.'.join(loc[:-1]) or 'top level'}: {', '.join(allowed)}"
        )
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] in ("model_type", "model_attributes_type", "dict_type") and _schema_at(loc) is not None:
        msg = f"must be a mapping of its keys ({', '.join(list(_schema_at(loc).model_fields)[:3])}, ...)"
    msg = msg.replace("Input should be", "must be")
    got = err.get("input")
    shown = "" if isinstance(got, (dict, list)) or got is None else f" (got {_short_repr(got)})"
    return f"{where}: {key}: {msg}{shown}"


def _short_repr(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _schema_at(loc: tuple) -> type[BaseModel] | None:
    schema: type[BaseModel] = Config
    for part in loc:
        field = schema.model_fields.get(part)
        annotation = field.annotation if field else None
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return None
        schema = annotation
    return schema


def config_from_dict(raw: dict, source: str = "config", overridden: dict | None = None) -> Config:
    try:
        config = Config.model_validate(raw)
    except ValidationError as exc:
        errors = exc.errors()
        first = _format_error(errors[0], source, overridden or {})
        more = f" (+{len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})" if len(errors) > 1 else ""
        raise ConfigError(first + more) from None
    _check_model_kwargs(config, source, overridden or {})
    _check_reflect_padding(config, source, overridden or {})
    return config


def _check_model_kwargs(config: Config, source: str, overridden: dict[tuple, str]) -> None:
    """model.kwargs against the model's constructor (cnnkit.models.check_kwargs), now rather than after
    the data has loaded; the error names the --set or the file the value came from."""
    from cnnkit.models import kwargs_problem

    problem = kwargs_problem(config.model.name, config.model.kwargs)
    if problem is not None:
        key, message = problem  # key: e.g. model.kwargs.widths
        by_key = {".".join(k): o for k, o in overridden.items()}
        where = next((by_key[k] for k in (key, "model.kwargs", "model", "model.name") if k in by_key), source)
        raise ConfigError(f"{where}: {message}")


def _check_reflect_padding(config: Config, source: str, overridden: dict[tuple, str]) -> None:
    """A mirrored border can be at most the picture less its edge row: with crop_padding ≥ H (or W)
    the reflected index runs off the image (an IndexError on the CPU, a device-side assert that
    kills the CUDA context on a GPU), so it is refused here, before any data loads."""
    data = config.data
    if not (data.augment and data.pad_mode == "reflect" and data.crop_padding > 0):
        return
    from cnnkit.data.datasets import DATASETS

    height, width = config.model.input_size or DATASETS[data.dataset].input_size
    if data.crop_padding < min(height, width):
        return
    keys = [("data", "crop_padding"), ("data", "pad_mode"), ("model", "input_size")]
    where = next((overridden[k] for k in keys if k in overridden), source)
    raise ConfigError(f"{where}: data.crop_padding={data.crop_padding} with data.pad_mode=reflect must be smaller "
                      f"than the {height}×{width} images (a mirror reaches at most {min(height, width) - 1} pixels); "
                      f"use data.crop_padding={min(height, width) - 1} or less, or data.pad_mode=zeros")


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path}: config file not found; pass an existing YAML file, e.g. configs/lenet.yaml")
    if path.is_dir():
        raise ConfigError(f"{path}: is a folder, not a YAML file; pass e.g. configs/lenet.yaml")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read: {exc}; pass a UTF-8 YAML file") from None
    try:
        raw = yaml.safe_load(text)
    except RecursionError:
        raise ConfigError(f"{path}: nested too deeply to be a config; a config is sections of keys") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{path}:{where}: malformed YAML: {problem}; fix the syntax there") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(
            f"{path}: expected a mapping of sections (model, data, optim, schedule, train, output), "
            f"got {_kind(raw)}; write sections of keys, e.g. train: {{epochs: 3}}"
        )
    check_plain_data(raw, str(path))
    return raw


def _kind(value: Any) -> str:
    """'a list', 'the number 42', 'the string 'x'': what a YAML value is, for error messages."""
    if isinstance(value, list):
        return "a list"
    if isinstance(value, bool) or value is None:
        return f"the value {value}"
    if isinstance(value, (int, float)):
        return f"the number {value!r}"
    if isinstance(value, str):
        return f"the string {value[:40]!r}"
    return f"a {type(value).__name__}"


# A config is small; a YAML alias bomb (&a [*b, *b, ...] nested) is not, once expanded.
MAX_VALUES = 100_000
MAX_DEPTH = 64
_PLAIN = (str, int, float, bool, type(None))


def check_plain_data(raw: Any, source: str, prefix: str = "") -> None:
    """Refuse what YAML can express but a config never needs, each with one line naming the key.

    YAML aliases (&a / *a) can make a value contain itself, or a small file expand to billions of
    values; `!!binary`, dates and sets are not config values either. Anything of that sort would
    otherwise crash later, e.g. when the resolved config is printed or saved with a checkpoint.
    """
    sizes: dict[int, int] = {}  # id -> expanded size of a finished list/dict (shared by aliases)
    on_path: set[int] = set()

    def walk(node: Any, where: str, depth: int) -> int:
        if isinstance(node, _PLAIN):
            return 1
        label = where or "the document"
        if not isinstance(node, (dict, list)):
            raise ConfigError(f"{source}: {label}: a YAML {type(node).__name__} value is not allowed in a config; "
                              "use a string, number, boolean, list or mapping")
        if id(node) in sizes:
            return sizes[id(node)]
        if id(node) in on_path:
            raise ConfigError(f"{source}: {label} contains itself through a YAML alias (&name / *name); "
                              "write the value out instead")
        if depth > MAX_DEPTH:
            raise ConfigError(f"{source}: {label} is nested more than {MAX_DEPTH} levels deep; "
                              "a config is sections of keys")
        on_path.add(id(node))
        total = 1
        for key, child in (node.items() if isinstance(node, dict) else enumerate(node)):
            if isinstance(node, dict) and not isinstance(key, _PLAIN):
                raise ConfigError(f"{source}: {label}: a YAML {type(key).__name__} is not allowed as a key; "
                                  "keys are names like epochs")
            total += walk(child, f"{where}.{key}" if where else str(key), depth + 1)
            if total > MAX_VALUES:
                raise ConfigError(f"{source}: {label} expands to more than {MAX_VALUES:,} values (YAML aliases?); "
                                  "a config is a few dozen keys")
        on_path.discard(id(node))
        sizes[id(node)] = total
        return total

    walk(raw, prefix, 0)


def apply_overrides(raw: dict, overrides: list[str] | tuple[str, ...], source: str) -> Config:
    """`raw` (a config as plain data, changed in place) with each `--set key=value` on top, validated.

    A problem names the --set that caused it, or else `source` (the file the rest came from).
    """
    overridden: dict[tuple, str] = {}
    for text in overrides:
        key_path, value = parse_override(text)
        origin = f"--set {text}"
        _apply_override(raw, key_path, value, origin)
        overridden[tuple(key_path)] = origin
    return config_from_dict(raw, source, overridden)


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Defaults < YAML file < each `--set key=value`, validated together."""
    raw = read_yaml(path) if path is not None else {}
    config = apply_overrides(raw, overrides, str(path) if path is not None else "defaults")
    if config.output.name is None and path is not None:
        config.output.name = Path(path).stem
    # The user wrote this file (or --set): a model import path in it is theirs to run, in this process
    # (as Hydra's _target_ is). A checkpoint's saved config never comes through here.
    from cnnkit.models.external import trust_name

    trust_name(config.model.name)
    return config

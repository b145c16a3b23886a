"""Checkpoints: plain dicts of tensors and plain types, written atomically, loaded safely.

`torch.load(weights_only=True)` refuses any pickle that names a class or function outside torch's
tensor allow-list, so a hostile file cannot run code; everything we store is tensors, numbers,
strings, lists and dicts. `model_from_checkpoint` is the one way back from a file to a model.
"""

from __future__ import annotations

import io
import pickle
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cnnkit import __version__
from cnnkit.build import model_from_config
from cnnkit.config import Config, check_plain_data, config_from_dict
from cnnkit.device import Runtime, setup_runtime
from cnnkit.errors import CheckpointError, ConfigError
from cnnkit.fileio import atomic_write
from cnnkit.models.external import untrusted_problem
from cnnkit.tasks import Task, task_for

FORMAT_VERSION = 1


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> Path:
    payload = {"format_version": FORMAT_VERSION, "cnnkit_version": __version__,
               "torch_version": str(torch.__version__), **payload}
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    return atomic_write(path, lambda f: f.write(buffer.getbuffer()))


# The first bytes of files people mistake for checkpoints, to say what a refused file looks like.
_KNOWN_MAGIC = [
    (b"\xff\xd8\xff", "a JPEG image"), (b"\x89PNG", "a PNG image"), (b"GIF8", "a GIF image"),
    (b"BM", "a BMP image"), (b"%PDF", "a PDF"), (b"\x1f\x8b", "a gzip file (extract it first?)"),
    (b"\x93NUMPY", "a numpy .npy file"), (b"\x89HDF", "an HDF5 file"),
]
_ZIP_MAGIC = b"PK\x03\x04"  # torch.save's default format is a zip archive
_PICKLE_MAGIC = b"\x80"  # torch.save's legacy format starts with a protocol-2 pickle


def _describe_foreign(head: bytes) -> str:
    for magic, what in _KNOWN_MAGIC:
        if head.startswith(magic):
            return what
    try:
        head.decode("utf-8")
    except UnicodeDecodeError:
        return "unknown binary data"
    return "a text file"


def _one_line(exc: BaseException, limit: int = 120) -> str:
    """torch's first sentence, on one line, short: its messages go on for paragraphs."""
    text = " ".join(str(exc).split())
    text = text.split(". ")[0].rstrip(".") if text else type(exc).__name__
    return text if len(text) <= limit else text[: limit - 1] + "…"


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a cnnkit checkpoint onto the CPU (so a CUDA checkpoint loads anywhere).

    Every way a file can be wrong (missing, a folder, empty, truncated, not a checkpoint, code
    inside its pickle, another format version, fields of the wrong type) is a `CheckpointError`.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint; pass a .pt file from a run folder, e.g. runs/NAME/best.pt")
    if path.is_dir():
        hint = " (it holds best.pt / last.pt)" if (path / "best.pt").exists() or (path / "last.pt").exists() else ""
        raise CheckpointError(f"{path}: is a folder{hint}; pass the checkpoint file itself, e.g. {path / 'best.pt'}")
    if not path.is_file():
        raise CheckpointError(f"{path}: not a regular file; pass a .pt file written by `cnnkit train`")
    try:
        with open(path, "rb") as f:
            head = f.read(16)
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read: {exc.strerror or exc}; check the file's permissions") from None
    if not head:
        raise CheckpointError(f"{path}: the file is empty; it is not a checkpoint (was the run killed while saving?)")
    if not (head.startswith(_ZIP_MAGIC) or head.startswith(_PICKLE_MAGIC)):
        raise CheckpointError(f"{path}: not a torch checkpoint (it looks like {_describe_foreign(head)}); "
                              "pass a .pt file written by `cnnkit train`")
    try:
        with warnings.catch_warnings():
            # e.g. "Detected pickle protocol 4": advice for torch developers, and it would make the
            # CLI's one-line error two lines.
            warnings.simplefilter("ignore")
            payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # torch's message is long advice on how to trust the file; we keep only what it refused.
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(exc))
        if found:
            raise CheckpointError(
                f"{path}: refused to load: its pickle names {found.group(1)}, which could run code; a checkpoint "
                "holds only tensors and plain data — only load checkpoints written by cnnkit (nothing in the "
                "file was run)") from None
        raise CheckpointError(f"{path}: refused to load: {_one_line(exc)}; it is damaged or not a checkpoint "
                              "written by cnnkit (nothing in the file was run)") from None
    except Exception as exc:  # truncated or garbled files surface as many different exception types
        raise CheckpointError(f"{path}: not a readable checkpoint ({_one_line(exc)}); the file is truncated or "
                              "damaged (was the run killed while saving?) — pass a .pt file written by "
                              "`cnnkit train`") from None
    if not isinstance(payload, dict) or "model" not in payload or "config" not in payload:
        raise CheckpointError(f"{path}: a torch file but not a cnnkit checkpoint (no model/config entries); "
                              "pass a .pt file written by `cnnkit train`")
    version = payload.get("format_version")
    if type(version) is not int:
        raise CheckpointError(f"{path}: missing checkpoint format version; pass a .pt file written by `cnnkit train`")
    if version > FORMAT_VERSION:
        raise CheckpointError(f"{path}: written by a newer cnnkit (checkpoint format {version}, this cnnkit reads "
                              f"≤ {FORMAT_VERSION}); upgrade cnnkit to load it")
    _check_fields(payload, path)
    return payload


def _is_str_dict(value: Any) -> bool:
    return isinstance(value, dict) and all(isinstance(k, str) for k in value)


def _is_state_dict(value: Any) -> bool:
    return _is_str_dict(value) and all(isinstance(t, torch.Tensor) for t in value.values())


# What each entry must be when present; `model` and `config` are always present.
_FIELD_CHECKS: dict[str, tuple[Any, str]] = {
    "model": (_is_state_dict, "a dict of parameter names to tensors"),
    # With train.ema_decay, `model` is the average and `train_model` the raw weights training resumes from.
    "train_model": (_is_state_dict, "a dict of parameter names to tensors"),
    "ema_updates": (lambda v: type(v) is int and v >= 0, "a whole number of updates"),
    "config": (_is_str_dict, "a dict of config sections"),
    "classes": (lambda v: isinstance(v, list) and all(isinstance(c, str) for c in v), "a list of class names"),
    "epoch": (lambda v: type(v) is int and v >= 0, "a whole number of epochs"),
    "metrics": (lambda v: isinstance(v, list) and all(_is_str_dict(row) for row in v), "a list of per-epoch dicts"),
    "best": (lambda v: _is_str_dict(v) and {"score", "epoch"} <= set(v), "a dict with score and epoch"),
    "optimizer": (lambda v: _is_optimizer_state(v) or (_is_str_dict(v) and isinstance(v.get("optimizers"), list)
                                                       and all(map(_is_optimizer_state, v["optimizers"]))),
                  "an optimizer state_dict (or, with optim.groups, a list of them under 'optimizers')"),
    "scheduler": (_is_str_dict, "a scheduler state_dict"),
    "rng": (lambda v: _is_str_dict(v) and _is_rng_state(v.get("torch"))
            and (v.get("cuda") is None or (isinstance(v["cuda"], list) and all(map(_is_rng_state, v["cuda"])))),
            "a dict holding the torch RNG state (and a list of CUDA devices' states)"),
    "task": (lambda v: isinstance(v, str), "a task name"),
}


def _is_rng_state(value: Any) -> bool:
    return isinstance(value, torch.Tensor) and value.dtype == torch.uint8


def _is_optimizer_state(value: Any) -> bool:
    return _is_str_dict(value) and {"state", "param_groups"} <= set(value)


def _check_fields(payload: dict, path: Path) -> None:
    for key, (ok, what) in _FIELD_CHECKS.items():
        if key in payload and not ok(payload[key]):
            got = type(payload[key]).__name__
            raise CheckpointError(f"{path}: entry '{key}' must be {what}, got a {got}; the checkpoint was edited "
                                  "or damaged — pass a .pt file written by `cnnkit train`")
    # A pickle can share or loop references like YAML aliases do: a config that contains itself, or
    # expands to billions of values, would hang or crash the run when written back out.
    for key in ("config", "classes", "metrics", "best"):
        if key in payload:
            try:
                check_plain_data(payload[key], f"{path} (entry '{key}')")
            except ConfigError as exc:
                raise CheckpointError(f"{exc}; the checkpoint was edited or damaged") from None


def load_model_state(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Strict load with a message that names the keys and shapes that disagree."""
    # A DDP model saved without unwrapping carries a `module.` prefix; accept it.
    if state and all(k.startswith("module.") for k in state):
        state = {k.removeprefix("module."): v for k, v in state.items()}
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [f"{k} {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
             for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    problems = []
    if missing:
        problems.append(f"missing keys {', '.join(missing[:4])}{' …' if len(missing) > 4 else ''}")
    if unexpected:
        problems.append(f"unexpected keys {', '.join(unexpected[:4])}{' …' if len(unexpected) > 4 else ''}")
    if wrong:
        problems.append(f"shape mismatch {', '.join(wrong[:3])}{' …' if len(wrong) > 3 else ''}")
    if problems:
        raise CheckpointError(f"{source}: weights do not fit this model: {'; '.join(problems)}; "
                              "the checkpoint is from another model or class count")
    model.load_state_dict(state)


def require_trusted(config: Config, path: str | Path) -> None:
    """A checkpoint naming a model import path (module:Name, file.py:Name) that this user has not
    trusted is refused here, before anything is imported or called (cnnkit.models.trust)."""
    problem = untrusted_problem(config.model.name)
    if problem is not None:
        raise CheckpointError(f"{path}: {problem}")


@dataclass
class LoadedModel:
    """A checkpoint's model rebuilt from its own config, on `runtime.device`, in eval mode."""

    path: Path
    model: nn.Module
    config: Config
    task: Task
    classes: list[str]  # empty when the checkpoint names none
    runtime: Runtime  # always fp32: eval and predict report the numbers of the saved weights
    payload: dict[str, Any]

    @property
    def epoch(self) -> int:
        return int(self.payload.get("epoch", 0))


def model_from_checkpoint(path: str | Path, device: str = "auto", *, refuse: tuple[str, ...] = (),
                          model: nn.Module | None = None) -> LoadedModel:
    """Load a checkpoint and rebuild its model (the averaged weights, with an EMA) and runtime.

    `refuse` names features the caller is about to use (e.g. "tta", "predict"): a task that cannot
    do one raises a CheckpointError before any weights are built. `model`, a model object the caller
    built (cnnkit.api), takes the weights instead of a model rebuilt from the saved config.
    """
    path = Path(path)
    payload = load_checkpoint(path)
    config = config_from_dict(payload["config"], f"{path} (its saved config)")
    if model is None:
        require_trusted(config, path)
    task = task_for(config)
    for feature in refuse:
        task.refuse(feature, path, config.model.name)
    runtime = setup_runtime(device, "fp32", config.train.threads, config.train.channels_last)
    classes = list(payload.get("classes") or [])
    model = model if model is not None else model_from_config(config, len(classes) or None)
    load_model_state(model, payload["model"], str(path))
    model = model.to(runtime.device, memory_format=runtime.memory_format).eval()
    return LoadedModel(path, model, config, task, classes, runtime, payload)

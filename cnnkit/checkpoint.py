"""Checkpoints: plain dicts of tensors and plain types, written atomically, loaded safely.

`torch.load(weights_only=True)` refuses any pickle that names a class or function outside torch's
tensor allow-list, so a hostile file cannot run code; everything we store is tensors, numbers,
strings, lists and dicts.
"""

from __future__ import annotations

import io
import pickle
import re
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cnnkit import __version__
from cnnkit.errors import CheckpointError
from cnnkit.fileio import atomic_write

FORMAT_VERSION = 1


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> Path:
    payload = {"format_version": FORMAT_VERSION, "cnnkit_version": __version__,
               "torch_version": str(torch.__version__), **payload}
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    return atomic_write(path, lambda f: f.write(buffer.getbuffer()))


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a cnnkit checkpoint onto the CPU (so a CUDA checkpoint loads anywhere)."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint; pass a .pt file from a run folder, e.g. runs/NAME/best.pt")
    if path.is_dir():
        hint = " (it holds best.pt / last.pt)" if (path / "best.pt").exists() or (path / "last.pt").exists() else ""
        raise CheckpointError(f"{path}: is a folder{hint}; pass the checkpoint file itself, e.g. {path / 'best.pt'}")
    size = path.stat().st_size
    if size == 0:
        raise CheckpointError(f"{path}: the file is empty; it is not a checkpoint (was the run killed while saving?)")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # torch's message is long advice on how to trust the file; we keep only what it refused.
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)|Unsupported operand (\d+)", str(exc))
        what = found.group(1) or f"pickle opcode {found.group(2)}" if found else "non-tensor content"
        raise CheckpointError(f"{path}: refused to load: it holds {what}, not just tensors and plain data; "
                              "only load checkpoints written by cnnkit (nothing in the file was run)") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError, UnicodeDecodeError,
            AttributeError, ImportError, IndexError, KeyError, TypeError, MemoryError, OverflowError) as exc:
        detail = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path}: not a readable checkpoint ({detail}); the file is truncated or "
                              "is not a torch checkpoint — pass a .pt file written by `cnnkit train`") from None
    if not isinstance(payload, dict) or "model" not in payload or "config" not in payload:
        raise CheckpointError(f"{path}: a torch file but not a cnnkit checkpoint (no model/config entries); "
                              "pass a .pt file written by `cnnkit train`")
    version = payload.get("format_version")
    if not isinstance(version, int):
        raise CheckpointError(f"{path}: missing checkpoint format version; pass a .pt file written by `cnnkit train`")
    if version > FORMAT_VERSION:
        raise CheckpointError(f"{path}: written by a newer cnnkit (checkpoint format {version}, this cnnkit reads "
                              f"≤ {FORMAT_VERSION}); upgrade cnnkit to load it")
    return payload


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

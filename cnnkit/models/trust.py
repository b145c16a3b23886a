"""Which model import paths this user trusts: a checkpoint stays data.

`model.name: mypkg.nets:ResNet18` (or `path/to/net.py:ResNet18`) makes cnnkit import a module and
call a function. When the name comes from the user — their config, `--set`, `--model`, their
Python call — that is what they asked for, as with Hydra's `_target_`. When it comes from a
checkpoint, it is somebody's data: a file from elsewhere naming `os:system` or `torch.hub:load`
must not make cnnkit import or call anything. So before any import, an import path is checked
against

- the paths this user trained with on this machine: `cnnkit train` (and sweep, tune) adds each one
  to `trusted-models.txt` in the user's config folder (`CNNKIT_CONFIG_DIR`, else
  `$XDG_CONFIG_HOME/cnnkit`, else `~/.config/cnnkit`), one per line, editable by hand;
- the paths the user named in this process (`trust(name)`), and `--trust-code` on the command line,
  which trusts whatever the checkpoints of that one command name (transformers' trust_remote_code).

Registry, `torchvision:` and `timm:` names run no user code and need no trust. A file path is
trusted as its absolute path, so `evil.py:Net` in another folder is not `net.py:Net` trusted here.
"""

from __future__ import annotations

import os
from pathlib import Path

from cnnkit.errors import RunError
from cnnkit.fileio import atomic_write_text

TRUST_FILE = "trusted-models.txt"
_HEADER = ("# Model import paths cnnkit may import and call when a checkpoint names them (cnnkit.models.trust).\n"
           "# `cnnkit train` adds the ones you train with; delete a line to take the trust back.\n")

_session: set[str] = set()  # trusted in this process only
_session_all = {"on": False}  # --trust-code: every import path the command's checkpoints name


def config_dir() -> Path:
    if os.environ.get("CNNKIT_CONFIG_DIR"):
        return Path(os.environ["CNNKIT_CONFIG_DIR"])
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "cnnkit"


def trust_file() -> Path:
    return config_dir() / TRUST_FILE


def remembered() -> set[str]:
    """The import paths in the trust file (none when there is no file or it cannot be read)."""
    try:
        text = trust_file().read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return set()
    return {line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")}


def is_trusted(key: str) -> bool:
    return _session_all["on"] or key in _session or key in remembered()


def trust(key: str, *, remember: bool = False) -> None:
    """Trust `key` (an import path as `cnnkit.models.external.trust_key` spells it) in this process,
    and with `remember` for later processes too (a best effort: a read-only home still trains)."""
    _session.add(key)
    if remember and key not in remembered():
        try:
            atomic_write_text(trust_file(), _HEADER + "".join(f"{k}\n" for k in sorted(remembered() | {key})))
        except (OSError, RunError):
            pass  # the run itself trusts it; only a later `cnnkit eval` would have to say --trust-code


def trust_all_in_this_process() -> None:
    """--trust-code: the user vouches for the checkpoints this one command reads."""
    _session_all["on"] = True


def trust_checkpoints(on: bool) -> None:
    """A command's --trust-code flag."""
    if on:
        trust_all_in_this_process()


def forget_session() -> None:
    """Back to the trust file alone (for tests and long-lived notebook processes)."""
    _session.clear()
    _session_all["on"] = False

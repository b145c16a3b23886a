"""The typer `app` every command registers on, its console, and the error guard.

Library code raises `CnnkitError` subclasses; `_guard` turns them into one line on stderr and the
error's exit code (2 for bad input). `cnnkit --debug ...` shows the traceback instead. This module
imports no command module, so each command module can import it without a cycle.
"""

from __future__ import annotations

import functools
import json
import os
import sys
from collections.abc import Callable

import typer
from rich.console import Console

from cnnkit import __version__
from cnnkit.errors import CnnkitError


def _flags_take_no_value() -> None:
    """typer 0.29 prints a type after every option in --help, flags included (`--json <bool>`), which
    reads as if the flag took a value; a flag shows none, options with a value keep theirs (`<path>`)."""
    from typer.core import TyperOption

    shown = getattr(TyperOption, "display_type_rich", None)
    if shown is None or getattr(shown, "_cnnkit", False):
        return  # older typer (< 0.29) has no such hook and prints no type after a flag

    def display_type_rich(self, ctx):
        return None if self.is_flag else shown(self, ctx)

    display_type_rich._cnnkit = True
    TyperOption.display_type_rich = display_type_rich


_flags_take_no_value()

app = typer.Typer(
    name="cnnkit",
    help="Train, evaluate and understand convolutional networks on CIFAR-10.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# Piped output (CI logs, files) gets a wide page rather than rich's 80-column default, so that
# tables stay one line per row; a terminal uses its own width.
console = Console(width=None if sys.stdout.isatty() else 160)
_state = {"debug": bool(os.environ.get("CNNKIT_DEBUG"))}


def _guard(fn: Callable) -> Callable:
    """Run a command; a CnnkitError becomes one line and its exit code, never a traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except CnnkitError as exc:
            if _state["debug"]:
                raise
            message = " ".join(str(exc).split())  # one line, whatever the message held
            print(f"error: {message}", file=sys.stderr, flush=True)
            raise typer.Exit(exc.exit_code) from None

    return wrapper


def _version(value: bool):
    if value:
        print(f"cnnkit {__version__}")
        raise typer.Exit()


@app.callback()
def _main_options(
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks (for developers)."),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Show the version."),
):
    _state["debug"] = debug or bool(os.environ.get("CNNKIT_DEBUG"))


def _print_json(data) -> None:
    print(json.dumps(data, indent=2))


def _warn(message: str) -> None:
    print(f"warning: {' '.join(message.split())}", file=sys.stderr, flush=True)


ConfigOpt = typer.Option(None, "--config", "-c", help="YAML config, e.g. configs/lenet.yaml.")
SetOpt = typer.Option(None, "--set", "-s", help="Override a config value: section.key=value (repeatable).")
TrustCodeOpt = typer.Option(
    False, "--trust-code", help="Let the checkpoint's model.name import and run the module or file it names "
    "(module:Name, file.py:Name) though you have not trained with it on this machine.")

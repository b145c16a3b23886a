"""The command line: parse, call one library function, render with rich, own the exit codes.

`app` lives in `cnnkit.cli.app`; each command module registers its commands on it when imported
here. `python -m cnnkit`, `python -m cnnkit.cli` and the `cnnkit` script all run `main`.
"""

from __future__ import annotations

from cnnkit.cli.app import _state, app, console  # noqa: F401  (the names tests and users reach for)

# Importing a command module registers its commands; this order is the order `cnnkit --help` lists them.
# isort: off
from cnnkit.cli import describe  # noqa: F401,E402  (models, config, shapes)
from cnnkit.cli import train  # noqa: F401,E402  (train)
from cnnkit.cli import results  # noqa: F401,E402  (eval, predict, runs, plot)
from cnnkit.cli import look  # noqa: F401,E402  (look)
from cnnkit.cli import export  # noqa: F401,E402  (export)
from cnnkit.cli import data  # noqa: F401,E402  (data)
from cnnkit.cli import experiments  # noqa: F401,E402  (sweep, tune)
# isort: on


def main() -> None:
    app(prog_name="cnnkit")

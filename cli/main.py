"""The `cielr` command line."""

from __future__ import annotations

import importlib
import os

import typer

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

app = typer.Typer(
    name="cielr",
    help="Reasoning-based image editing at dataset scale (CIELR on Prefect).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# sub-command modules, in help order; each defines register(app)
COMMAND_MODULES = ["config", "models", "ssr", "plan", "edit", "run", "demo", "doctor", "eval", "export", "deploy"]

for _name in COMMAND_MODULES:
    try:
        _mod = importlib.import_module(f"cli.commands.{_name}")
    except ModuleNotFoundError as _e:
        if _e.name == f"cli.commands.{_name}":
            continue  # command not built yet
        raise
    _mod.register(app)


def main() -> None:
    app()


if __name__ == "__main__":
    main()

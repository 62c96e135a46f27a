"""Options and helpers shared by the sub-commands."""

from __future__ import annotations

from typing import Any, Optional

import typer

from cielr_core.config import PROFILES, ConfigError, Settings, load_settings
from cielr_core.config import read_config_file as config_file_data

PROFILE_HELP = f"config profile: one of {', '.join(PROFILES)} (default: real models; tiny: toy random-weight models)"
ProfileOpt = typer.Option(None, "--profile", "-p", help=PROFILE_HELP)
ConfigFileOpt = typer.Option(None, "--config", "-c", help="YAML config file (CIELR_CONFIG_FILE)")


def settings_or_exit(
    profile: Optional[str], config_file: Optional[str], overrides: dict[str, Any] | None = None
) -> Settings:
    try:
        return load_settings(profile=profile, config_file=config_file, overrides=overrides)
    except (ConfigError, ValueError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from e


def fail(message: str, code: int = 1) -> "typer.Exit":
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


def read_config_file(path: Optional[str]) -> dict[str, Any] | None:
    """A YAML config file as a mapping (what flows take as their `config` parameter)."""
    try:
        return config_file_data(path)
    except ConfigError as e:
        raise fail(str(e), 2) from e


VerboseOpt = typer.Option(False, "--verbose", "-v", help="show Prefect's log lines here instead of the log file "
                          "(and one line per row instead of the live display)")


def is_usage_error(e: BaseException) -> bool:
    """Errors that stop a run before any row: exit code 2 (a manifest, configuration, model or store
    problem, or flow parameters Prefect refused)."""
    import pydantic
    from prefect.exceptions import ParameterTypeError, SignatureMismatchError

    from cielr_core.manifest import ManifestError
    from cielr_core.models import ModelUnavailableError
    from storage import StoreError

    return isinstance(e, (ManifestError, ModelUnavailableError, ConfigError, StoreError, pydantic.ValidationError,
                          ParameterTypeError, SignatureMismatchError))


def flow_error(e: BaseException, usage: tuple[type[BaseException], ...] = ()) -> "typer.Exit":
    """The `error:` line for a flow that ended without results (its traceback goes to the log file);
    exit code 2 for a usage error (``usage``: more exception types that count as one), else 1."""
    from cli.live import log_exception

    log_exception(e)
    if is_usage_error(e) or isinstance(e, usage):
        return fail(str(e), 2)
    return fail(f"{type(e).__name__}: {e}", 1)

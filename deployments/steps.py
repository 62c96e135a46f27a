"""Deployment steps that prefect.yaml names (Prefect imports them by their dotted path).

* :func:`check_environment`, the build step: `prefect deploy --all` stops before registering anything
  when a required ``CIELR_*`` variable is unset or empty, with one message naming every missing
  variable and what it is for (a bare ``{{ $CIELR_STORE }}`` placeholder would instead be deployed as
  the literal parameter value); it fills in the defaults of the optional ones.
* :func:`set_project_directory`, the pull step: the worker's flow-run process moves into the project
  (``CIELR_PROJECT_DIR`` of the worker's environment, else the checkout that the installed ``cielr``
  package lives in: the project folder of an editable install, /opt/cielr in the worker image), so
  no deploying machine's path is stored in the deployment.

The work pool is a plain name in prefect.yaml (``cielr-gpu``; ``prefect deploy --name nightly --pool
NAME`` picks another for one deployment: Prefect ignores ``--pool`` when a command deploys several),
not an environment placeholder: Prefect looks the pool up before any build step runs,
so an unset ``{{ $CIELR_POOL }}`` could only be reported as a pool named after the placeholder.
``CIELR_POOL`` is therefore not read; set, it stops the deploy with a message saying so, rather than
letting the deployments land on a pool the operator did not mean.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

PROJECT_DIR = Path(__file__).resolve().parent.parent
PREFECT_FILE = PROJECT_DIR / "prefect.yaml"
_ENV_PLACEHOLDER = re.compile(r"{{\s*\$(\w+)\s*}}")

STEP_ID = "cielr"  # the build step's id: prefect.yaml reads its outputs as {{ cielr.<key> }}

DEFAULT_POOL = "cielr-gpu"  # prefect.yaml's work pool (`prefect deploy --name N --pool NAME` overrides it)

# variable -> (output key, default (None: required), what it is for). They reach prefect.yaml
# through the build step's outputs, so the optional ones can have defaults.
VARIABLES: dict[str, tuple[str, str | None, str]] = {
    "CIELR_MANIFEST": ("manifest", None, "manifest URI the nightly run edits (e.g. s3://bucket/manifest.parquet)"),
    "CIELR_STORE": ("store", None, "artifact store URL (shared storage, e.g. s3://bucket/cielr)"),
    "CIELR_PROFILE": ("profile", "default", "config profile the runs use (default, tiny or paper)"),
    "CIELR_CRON": ("cron", "0 2 * * *", "cron schedule of the nightly deployment"),
    "CIELR_TIMEZONE": ("timezone", "UTC", "time zone of that schedule"),
    "CIELR_GPU_TAG": ("gpu_tag", f"gpu:{DEFAULT_POOL}",
                      "GPU concurrency limit the runs' chunks hold (gpu:NAME when deploying with --pool NAME)"),
    "CIELR_CUDA_VISIBLE_DEVICES": ("cuda_visible_devices", "0", "GPU(s) the runs see"),
}


def placeholders(prefect_file: Path = PREFECT_FILE) -> list[str]:
    """The ``{{ $NAME }}`` environment variables that prefect.yaml reads directly, in file order."""
    import json

    import yaml

    names: list[str] = []
    for name in _ENV_PLACEHOLDER.findall(json.dumps(yaml.safe_load(Path(prefect_file).read_text()))):
        if name not in names:
            names.append(name)
    return names


def _value(env: dict[str, str], name: str) -> str:
    return str(env.get(name, "")).strip()


def missing_variables(env: dict[str, str] | None = None, prefect_file: Path = PREFECT_FILE) -> list[str]:
    """The required variables (no default, or read directly by prefect.yaml) unset or empty in ``env``
    (default: os.environ)."""
    env = os.environ if env is None else env
    required = [n for n, (_, default, _) in VARIABLES.items() if default is None]
    required += [n for n in placeholders(prefect_file) if n not in required]
    return [n for n in required if not _value(env, n)]


def pool_variable_message(env: dict[str, str] | None = None) -> str | None:
    """The message that stops a deploy when ``CIELR_POOL`` is set (prefect.yaml does not read it)."""
    env = os.environ if env is None else env
    pool = _value(env, "CIELR_POOL")
    if not pool:
        return None
    return (f"CIELR_POOL is set ({pool!r}), but prefect.yaml does not read it: its deployments go to the work "
            f"pool {DEFAULT_POOL!r} unless the command names another. Unset CIELR_POOL and run "
            f"`cielr deploy --pool {pool} ...`, or `prefect deploy --name nightly --pool {pool}` (one deployment "
            f"per command: Prefect ignores --pool with --all) with CIELR_GPU_TAG=gpu:{pool}.")


def missing_message(missing: list[str]) -> str:
    lines = [f"prefect.yaml needs these environment variables, which are not set: {', '.join(missing)}"]
    lines += [f"  {n}: {VARIABLES[n][2] if n in VARIABLES else 'read by prefect.yaml'}" for n in missing]
    lines.append("Export them and run `prefect deploy --all` again, or use `cielr deploy --manifest URI --store URL`, "
                 "which fills them in (`cielr deploy --check` lists what is missing).")
    return "\n".join(lines)


def deploy_values(env: dict[str, str] | None = None) -> dict[str, str]:
    """The values prefect.yaml reads as ``{{ cielr.<key> }}``: each variable's value, else its
    default; ValueError naming every required variable that is missing."""
    env = os.environ if env is None else env
    missing = missing_variables(env)
    if missing:
        raise ValueError(missing_message(missing))
    pool_message = pool_variable_message(env)
    if pool_message:
        raise ValueError(pool_message)
    out: dict[str, str] = {}
    for name, (key, default, _) in VARIABLES.items():
        value = _value(env, name)
        if not value:
            value = str(default)
        out[key] = value
    return out


def check_environment(**_: Any) -> dict[str, str]:
    """Build step: fail with one message naming every missing required ``CIELR_*`` variable; else
    return the deployment's values (defaults filled in) for prefect.yaml's ``{{ cielr.<key> }}``."""
    return deploy_values()


def project_directory(env: dict[str, str] | None = None) -> Path:
    """Where a worker finds the project: ``CIELR_PROJECT_DIR`` of its environment, else the checkout
    of the installed package."""
    env = os.environ if env is None else env
    configured = str(env.get("CIELR_PROJECT_DIR", "")).strip()
    path = Path(configured).expanduser() if configured else PROJECT_DIR
    if not (path / "flows").is_dir():
        raise FileNotFoundError(
            f"no CIELR project at {path} (no flows/ folder); "
            + ("CIELR_PROJECT_DIR points there" if configured
               else "set CIELR_PROJECT_DIR in the worker's environment to the project folder"))
    return path


def set_project_directory(**_: Any) -> dict[str, str]:
    """Pull step: change into the project folder, so the deployment's entrypoint (flows/...) loads."""
    path = project_directory()
    os.chdir(path)
    return {"directory": str(path)}

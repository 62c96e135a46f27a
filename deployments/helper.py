"""The deploy helper behind `cielr deploy`.

It only drives Prefect's own mechanisms: it creates the work pool (with our base job template for
the pool type) and the GPU concurrency limit (a global one, of which each dataset chunk
holds a slot) if they are missing, then applies the project's root
``prefect.yaml`` with ``prefect deploy --name N --pool POOL`` per deployment (Prefect ignores
``--pool`` when one command deploys several), passing the ``CIELR_*`` values that the YAML's build
step reads through the environment.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cielr_core.config import PROFILES

HERE = Path(__file__).resolve().parent
PROJECT_DIR = HERE.parent
PREFECT_FILE = PROJECT_DIR / "prefect.yaml"
POOL_TYPES = ("process", "docker", "kubernetes")
DEFAULT_CRON = "0 2 * * *"

# deployment name -> (entrypoint file that must exist for it to be applied, the flow's name)
DEPLOYMENTS = {"nightly": ("flows/edit_dataset.py", "edit-dataset"), "evaluate": ("flows/evaluate.py", "evaluate")}


def check_profile(profile: str) -> str:
    """``profile`` when the config defines it (cielr_core.config.PROFILES), else ValueError."""
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; choose one of {', '.join(PROFILES)}")
    return profile


def template_path(pool_type: str) -> Path:
    if pool_type not in POOL_TYPES:
        raise ValueError(f"unknown pool type {pool_type!r}; choose one of {', '.join(POOL_TYPES)}")
    return HERE / f"{pool_type}-pool.json"


def load_template(pool_type: str) -> dict[str, Any]:
    with open(template_path(pool_type)) as f:
        return json.load(f)


def variable_defaults(template: dict[str, Any]) -> dict[str, Any]:
    props = template["variables"].get("properties", {})
    return {k: v["default"] for k, v in props.items() if "default" in v}


def render_job_configuration(pool_type: str, job_variables: dict[str, Any] | None = None) -> dict[str, Any]:
    """The job configuration a worker of this pool type would receive (defaults < job variables),
    rendered with Prefect's own templating."""
    from prefect.utilities.templating import apply_values

    template = load_template(pool_type)
    values = {**variable_defaults(template), **(job_variables or {})}
    return apply_values(template["job_configuration"], values)


@dataclass
class DeployOptions:
    pool: str = "cielr-gpu"
    pool_type: str = "process"
    manifest: str = ""
    store: str = "./cielr-data"
    profile: str = "default"
    cron: str = DEFAULT_CRON
    timezone: str = "UTC"
    gpu_tag: str | None = None  # default: gpu:<pool>
    gpu_limit: int = 1
    cuda_visible_devices: str = "0"
    names: list[str] = field(default_factory=list)  # default: every deployment whose entrypoint exists

    @property
    def tag(self) -> str:
        return self.gpu_tag or f"gpu:{self.pool}"

    def __post_init__(self) -> None:
        check_profile(self.profile)

    def deploy_env(self) -> dict[str, str]:
        return {
            "CIELR_MANIFEST": self.manifest,
            "CIELR_STORE": self.store,
            "CIELR_PROFILE": self.profile,
            "CIELR_CRON": self.cron,
            "CIELR_TIMEZONE": self.timezone,
            "CIELR_GPU_TAG": self.tag,
            "CIELR_CUDA_VISIBLE_DEVICES": self.cuda_visible_devices,
        }

    def deployment_names(self) -> list[str]:
        if self.names:
            unknown = [n for n in self.names if n not in DEPLOYMENTS]
            if unknown:
                raise ValueError(f"unknown deployment(s) {', '.join(unknown)}; known: {', '.join(DEPLOYMENTS)}")
            return list(self.names)
        return [n for n, (entry, _) in DEPLOYMENTS.items() if (PROJECT_DIR / entry).exists()]


async def ensure_pool(name: str, pool_type: str) -> str:
    """Create the work pool with our base job template unless it exists. Returns 'created'/'exists'."""
    from prefect import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectNotFound

    async with get_client() as client:
        try:
            await client.read_work_pool(name)
            return "exists"
        except ObjectNotFound:
            pass
        await client.create_work_pool(
            WorkPoolCreate(name=name, type=pool_type, base_job_template=load_template(pool_type))
        )
        return "created"


async def ensure_gpu_limit(name: str, limit: int) -> str:
    """A global concurrency limit ``name`` with ``limit`` slots (created, or its limit updated): each
    dataset chunk holds one slot while it runs (tasks.gpu.gpu_slot), so at most ``limit`` chunks use
    the GPU at once. Each worker's runs name their own limit (gpu:<worker>), so one machine's GPU is
    never oversubscribed while other machines work in parallel. Returns 'created' / 'updated' /
    'exists'."""
    from prefect import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate, GlobalConcurrencyLimitUpdate
    from prefect.exceptions import ObjectNotFound

    async with get_client() as client:
        try:
            current = await client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            await client.create_global_concurrency_limit(
                GlobalConcurrencyLimitCreate(name=name, limit=limit, active=True))
            return "created"
        if current.limit == limit and current.active:
            return "exists"
        await client.update_global_concurrency_limit(name, GlobalConcurrencyLimitUpdate(limit=limit, active=True))
        return "updated"


def apply_deployments(opts: DeployOptions, *, prefect_file: Path = PREFECT_FILE) -> list[str]:
    """Run `prefect deploy` on prefect.yaml for the selected deployments; returns their full names.

    One `prefect deploy --name N --pool POOL` per deployment: prefect.yaml names the pool cielr-gpu,
    and Prefect ignores ``--pool`` when one command deploys several deployments."""
    names = opts.deployment_names()
    if not names:
        raise RuntimeError("no deployment to apply (no entrypoint file found)")
    env = {**os.environ, **opts.deploy_env(), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    env.pop("CIELR_POOL", None)  # prefect.yaml does not read it (the pool is --pool); its build step refuses it
    for n in names:
        cmd = [sys.executable, "-m", "prefect", "--no-prompt", "deploy", "--prefect-file", str(prefect_file),
               "--name", n, "--pool", opts.pool]
        proc = subprocess.run(cmd, cwd=PROJECT_DIR, env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            tail = (proc.stdout + proc.stderr).strip()[-3000:]
            raise RuntimeError(f"prefect deploy of {n} failed (exit {proc.returncode}):\n{tail}")
    return [f"{DEPLOYMENTS[n][1]}/{n}" for n in names]

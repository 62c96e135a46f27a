"""`cielr deploy`: work pool + GPU concurrency limit + the deployments of the project's prefect.yaml."""

from __future__ import annotations

from typing import List, Optional

import typer

from cli.commands.common import PROFILE_HELP, fail


def register(app: typer.Typer) -> None:
    @app.command("deploy")
    def deploy(
        manifest: Optional[str] = typer.Option(None, "--manifest", "-m", help="manifest URI the nightly run edits"),
        store: Optional[str] = typer.Option(
            None, "--store", "-s", help="artifact store URL (shared storage, e.g. s3://bucket/cielr)"),
        pool_type: str = typer.Option("process", "--pool-type", help="process | docker | kubernetes"),
        pool: str = typer.Option("cielr-gpu", "--pool", help="work pool name (created if missing)"),
        profile: str = typer.Option("default", "--profile", "-p", help=PROFILE_HELP + "; the runs use it"),
        cron: str = typer.Option("0 2 * * *", "--cron", help="schedule of the nightly deployment"),
        timezone: str = typer.Option("UTC", "--timezone", help="time zone of the cron schedule"),
        gpu_tag: Optional[str] = typer.Option(None, "--gpu-tag", help="GPU concurrency limit name (default gpu:<pool>)"),
        gpu_limit: int = typer.Option(1, "--gpu-limit", min=1, help="dataset chunks using the GPU at once (slots of that limit)"),
        cuda_visible_devices: str = typer.Option("0", "--cuda-visible-devices", help="GPU(s) the runs see"),
        name: Optional[List[str]] = typer.Option(None, "--name", help="deployment(s) to apply (default: all)"),
        check: bool = typer.Option(
            False, "--check", help="only check this environment for `prefect deploy --all`: list prefect.yaml's "
            "CIELR_* variables (set, defaulted, missing), exit 2 naming the missing ones"),
    ) -> None:
        """Create the work pool and the GPU concurrency limit if missing, then apply the deployments
        (`prefect --no-prompt deploy --name N --pool POOL` per deployment, from the project folder, with
        the CIELR_* variables of prefect.yaml filled in). Then start a worker: `prefect worker start --pool POOL`.
        Workers find the project through the installed cielr package (or their CIELR_PROJECT_DIR)."""
        import asyncio
        import os

        from deployments import steps

        if check:
            missing = steps.missing_variables()
            for var in [*steps.VARIABLES, *(n for n in steps.placeholders() if n not in steps.VARIABLES)]:
                _, default, what = steps.VARIABLES.get(var, (var, None, "read by prefect.yaml"))
                value = os.environ.get(var, "").strip()
                state = repr(value) if value else ("MISSING" if var in missing else f"not set, default {default!r}")
                typer.echo(f"{var} = {state}  ({what})", err=True)
            if missing:
                raise fail(steps.missing_message(missing), 2)
            pool_message = steps.pool_variable_message()
            if pool_message:
                raise fail(pool_message, 2)
            typer.echo(f"prefect.yaml: every CIELR_* variable is set; `prefect deploy --all` can run "
                       f"(work pool {steps.DEFAULT_POOL}; `--pool NAME` for another)", err=True)
            return
        if not manifest or not store:
            raise fail("--manifest and --store are required (or --check to check the environment only)", 2)

        from deployments.helper import (
            POOL_TYPES,
            DeployOptions,
            apply_deployments,
            check_profile,
            ensure_gpu_limit,
            ensure_pool,
        )

        if pool_type not in POOL_TYPES:
            raise fail(f"--pool-type must be one of {', '.join(POOL_TYPES)}", 2)
        try:
            check_profile(profile)
        except ValueError as e:
            raise fail(f"--profile: {e}", 2) from e
        opts = DeployOptions(pool=pool, pool_type=pool_type, manifest=manifest, store=store, profile=profile,
                             cron=cron, timezone=timezone, gpu_tag=gpu_tag, gpu_limit=gpu_limit,
                             cuda_visible_devices=cuda_visible_devices, names=name or [])
        try:
            status = asyncio.run(ensure_pool(pool, pool_type))
            typer.echo(f"work pool {pool} ({pool_type}): {status}", err=True)
            limit_status = asyncio.run(ensure_gpu_limit(opts.tag, gpu_limit))
            typer.echo(f"global concurrency limit {opts.tag} = {gpu_limit}: {limit_status}", err=True)
            names = apply_deployments(opts)
        except Exception as e:  # noqa: BLE001
            raise fail(f"{type(e).__name__}: {e}") from e
        typer.echo(f"start a worker with: prefect worker start --pool {pool}", err=True)
        for n in names:
            typer.echo(n)

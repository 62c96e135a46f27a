"""`cielr run MANIFEST --store URL`: the dataset job."""

from __future__ import annotations

import os
from typing import Any, List, Optional

import typer

from cli.commands.common import ConfigFileOpt, ProfileOpt, VerboseOpt, fail, flow_error, read_config_file
from cli.live import EXIT_CODES, exit_code, quiet_progress_bars, run_console


def register(app: typer.Typer) -> None:
    @app.command("run", help=(
        "Run edit_dataset over MANIFEST. The last line of output is the URI of results.parquet. "
        "A live display shows the rows (on a terminal; else one line per row on stderr); Prefect's log "
        "lines go to a log file (its path is printed first) unless --verbose.\n\n" + EXIT_CODES))
    def run(
        manifest: str = typer.Argument(..., help="Parquet manifest: image_id, image_uri, instruction [, seed, mask_uri, reference_text]"),
        store: Optional[str] = typer.Option(None, "--store", "-s", help="artifact store URL (path or s3://bucket/prefix)"),
        profile: Optional[str] = ProfileOpt,
        config_file: Optional[str] = ConfigFileOpt,
        limit: Optional[int] = typer.Option(None, "--limit", "-n", help="only the first N rows"),
        chunk_size: Optional[int] = typer.Option(None, "--chunk-size", help="rows per chunk subflow"),
        runner: str = typer.Option("default", "--runner", help="default (in-process) or dask (prefect-dask)"),
        dask_address: Optional[str] = typer.Option(
            None, "--dask-address", help="Dask scheduler (tcp://host:8786); default: a LocalCluster for this run"),
        allow_root: Optional[List[str]] = typer.Option(
            None, "--allow-root", help="also allow images under DIR (repeatable; adds to limits.allowed_input_roots, "
            "whose default is the manifest's folder)"),
        verbose: bool = VerboseOpt,
    ) -> None:
        quiet_progress_bars(verbose)
        if runner not in ("default", "dask"):
            raise fail("--runner must be default or dask", 2)
        if dask_address and runner != "dask":
            raise fail("--dask-address needs --runner dask", 2)
        if limit is not None and limit < 0:
            raise fail("--limit must be >= 0", 2)
        if chunk_size is not None and chunk_size < 1:
            raise fail("--chunk-size must be >= 1", 2)
        config: dict[str, Any] | None = read_config_file(config_file)
        if allow_root:
            config = with_allowed_roots(config, manifest, allow_root, profile)
        check_manifest_roots(manifest, store, profile, config, limit)
        from flows.edit_dataset import edit_dataset

        uri = run_dataset_flow(edit_dataset, "edit_dataset", verbose, manifest_uri=manifest, store=store,
                               profile=profile, config=config, chunk_size=chunk_size, limit=limit, runner=runner,
                               dask_address=dask_address)
        code = summarize_results(uri, store, profile, config)
        typer.echo(f"browse: {uri.rsplit('/', 1)[0]}/index.html (cielr export {uri} --to DIR copies the outputs)", err=True)
        typer.echo(uri)
        raise typer.Exit(code)


def with_allowed_roots(config: dict[str, Any] | None, manifest: str, dirs: list[str],
                       profile: str | None) -> dict[str, Any]:
    """``config`` with ``dirs`` added to limits.allowed_input_roots (to the manifest's folder when the
    setting is empty, as it is by default)."""
    from cli.commands.common import settings_or_exit

    for d in dirs:
        if "://" not in d and not os.path.isdir(d):
            raise fail(f"--allow-root {d}: not a directory", 2)
    cfg = dict(config or {})
    current = list(settings_or_exit(profile, None, cfg or None).limits.allowed_input_roots)
    if not current:
        current = [manifest.rsplit("/", 1)[0] if "://" in manifest and not manifest.startswith("file://")
                   else os.path.dirname(os.path.realpath(manifest.removeprefix("file://")))]
    roots = current + [d if "://" in d else os.path.realpath(d) for d in dirs]
    cfg["limits"] = {**cfg.get("limits", {}), "allowed_input_roots": roots}
    return cfg


def check_manifest_roots(manifest: str, store: str | None, profile: str | None, config: dict[str, Any] | None,
                         limit: int | None) -> None:
    """For a local manifest: its errors (missing, not Parquet, missing columns) now, with exit code 2,
    how many rows are outside the allowed input roots, with how to allow them, and the models the
    valid rows need (a missing one: exit 2 before Prefect starts; the flow checks again for
    deployments)."""
    if "://" in manifest and not manifest.startswith("file://"):
        return
    from cielr_core.manifest import ManifestError
    from cli.commands.common import settings_or_exit
    from tasks.manifest import load_manifest

    settings = settings_or_exit(profile, None, {**(config or {}), **({"store": {"url": store}} if store else {})})
    try:
        m = load_manifest(manifest, settings, limit=limit)
    except ManifestError as e:
        raise fail(str(e), 2) from e
    outside = [r for r in m.rejected if "outside the allowed input roots" in (r.get("error") or "")]
    if outside:
        folders = sorted({os.path.dirname(str(r["image_uri"])) for r in outside})
        common = os.path.commonpath(folders) if all(os.path.isabs(f) for f in folders) else folders[0]
        total = len(m.rows) + len(m.rejected)
        typer.echo(f"note: {len(outside)} of {total} rows reference images outside the allowed input roots "
                   f"(limits.allowed_input_roots; default: the manifest's folder) and will be invalid; allow them "
                   f"with --allow-root {common} (repeatable) or CIELR_LIMITS__ALLOWED_INPUT_ROOTS", err=True)
    if m.rows:
        from cielr_core.preflight import ModelsUnavailable, check_models

        try:
            check_models(settings)
        except ModelsUnavailable as e:
            raise fail(str(e), 2) from e


def run_dataset_flow(flow_fn: Any, title: str, verbose: bool, usage: tuple[type[BaseException], ...] = (),
                     **params: Any) -> str:
    """Run an edit_dataset-like flow in this process under the live display; returns its results URI
    (also when the run ended Failed or Cancelled); a run that ended without results exits 1 or 2 with
    an `error:` line (the traceback is in the log file)."""
    from flows.edit_dataset import results_uri

    with run_console(title, verbose):
        try:
            return results_uri(flow_fn(**params, return_state=True))
        except Exception as e:  # noqa: BLE001 - the message here, the traceback in the log
            raise flow_error(e, usage) from None


def summarize_results(uri: str, store: str | None, profile: str | None, config: dict[str, Any] | None) -> int:
    """Counts by status and the bad rows on stderr; returns the exit code the rows give (0 or 1)."""
    from tasks import runtime

    st = runtime.store(runtime.resolve(profile, config, store))
    rows = st.get_table(st.key_for(uri)).to_pylist()
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    typer.echo("rows: " + (", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "none"), err=True)
    for r in rows:
        if r["status"] in ("failed", "invalid", "cancelled"):
            typer.echo(f"  {r['image_id']}: {r['status']}: {r['error']}", err=True)
    return exit_code([r["status"] for r in rows])

"""`cielr run MANIFEST --store URL`: the dataset job."""

from __future__ import annotations

from typing import Any, Optional

import typer

from cli.commands.common import ConfigFileOpt, ProfileOpt, fail, read_config_file


def register(app: typer.Typer) -> None:
    @app.command("run")
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
    ) -> None:
        """Run edit_dataset over MANIFEST. The last line of output is the URI of results.parquet."""
        if runner not in ("default", "dask"):
            raise fail("--runner must be default or dask", 2)
        if dask_address and runner != "dask":
            raise fail("--dask-address needs --runner dask", 2)
        from cielr_core.manifest import ManifestError
        from flows.edit_dataset import edit_dataset

        config: dict[str, Any] | None = read_config_file(config_file)
        try:
            uri = edit_dataset(manifest_uri=manifest, store=store, profile=profile, config=config,
                               chunk_size=chunk_size, limit=limit, runner=runner, dask_address=dask_address)
        except ManifestError as e:
            raise fail(str(e), 2) from e
        except Exception as e:  # noqa: BLE001 - the flow already logged it
            raise fail(f"{type(e).__name__}: {e}") from e
        summarize_results(uri, store, profile, config)
        typer.echo(uri)


def summarize_results(uri: str, store: str | None, profile: str | None, config: dict[str, Any] | None) -> None:
    from tasks import runtime

    st = runtime.store(runtime.resolve(profile, config, store))
    rows = st.get_table(st.key_for(uri)).to_pylist()
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    typer.echo("rows: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())), err=True)
    for r in rows:
        if r["status"] in ("failed", "invalid"):
            typer.echo(f"  {r['image_id']}: {r['error']}", err=True)

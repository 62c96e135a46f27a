"""`cielr export RESULTS_URI --to DIR`: a run's outputs, copied into a folder a person can open."""

from __future__ import annotations

import typer

from cli.commands.common import ConfigFileOpt, ProfileOpt, fail, read_config_file

EXPORT_HELP = (
    "Copy the outputs of one `cielr run` into DIR: DIR/<image_id>/ holds input.png, edited.png, mask.png, "
    "overlay.png, plan.json, trace.json and ssr.json (what the row has), and error.txt for a failed or invalid "
    "row; DIR/index.html shows every row with thumbnails and links to those files; DIR/results.parquet is the "
    "run's table; DIR/export.json lists each row's folder, status, error and files.\n\n"
    "RESULTS_URI is what `cielr run` prints last (the run's results.parquet, a path or an s3:// URL) or "
    "its run folder. S3 endpoint and credentials come from the store settings (CIELR_STORE__ENDPOINT_URL, "
    "CIELR_STORE__KEY, CIELR_STORE__SECRET, or --config).\n\n"
    "Exit codes: 0 every file copied; 1 a file a row names could not be read (the rest is exported; export.json "
    "lists what is missing); 2 nothing exported: RESULTS_URI is not a run's results, or DIR is a non-empty folder "
    "that is not an earlier export of this run (--force writes over it)."
)


def register(app: typer.Typer) -> None:
    @app.command("export", help=EXPORT_HELP)
    def export(
        results_uri: str = typer.Argument(..., help="results.parquet URI that `cielr run` printed, or its run folder"),
        to: str = typer.Option(..., "--to", "-o", help="folder to write (created if missing)"),
        force: bool = typer.Option(False, "--force", help="write into a non-empty folder that holds something else"),
        profile: str | None = ProfileOpt,
        config_file: str | None = ConfigFileOpt,
    ) -> None:
        import os

        from tasks import keys, runtime
        from tasks.run_outputs import ExportError, export_run

        uri = results_uri.strip()
        uri = uri.removeprefix("file://")
        root = keys.store_root_of_run(uri)
        run_id = keys.run_id_of(uri)
        if root is None or run_id is None:
            raise fail(f"{results_uri!r} is not a run's results: expected <store>/{keys.results_key('<run_id>')} "
                       "(the last line `cielr run` prints) or its run folder", 2)
        if "://" not in root:
            root = os.path.abspath(root)
        config = read_config_file(config_file)
        try:
            st = runtime.store(runtime.resolve(profile, config, root))
            key = keys.results_key(run_id)
            if not st.exists(key):
                raise fail(f"no results.parquet in {st.uri_for(keys.run_prefix(run_id))}", 2)
            done = export_run(st, key, os.path.abspath(to), force=force)
        except ExportError as e:
            raise fail(str(e), 2 if e.usage else 1) from e
        except typer.Exit:
            raise
        except Exception as e:
            raise fail(f"{type(e).__name__}: {e}") from e
        rows = done["rows"]
        bad = [r for r in rows if r["status"] not in ("ok", "no_target")]
        typer.echo(f"exported {len(rows)} rows ({len(bad)} not ok) from {done['source']}", err=True)
        for m in done["missing"]:
            typer.echo(f"  missing: {m}", err=True)
        for r in rows:
            if r["folder"] is None:
                typer.echo(f"  no folder for {r['image_id']!r} ({r['status']}): listed in export.json", err=True)
        typer.echo(os.path.join(os.path.abspath(to), "index.html"))
        if done["missing"]:
            raise typer.Exit(1)

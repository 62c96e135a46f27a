"""`cielr eval --benchmark NAME:PATH --store URL`: edit a benchmark and score it."""

from __future__ import annotations

from typing import Optional

import typer

from cli.commands.common import ConfigFileOpt, ProfileOpt, VerboseOpt, fail, read_config_file


def register(app: typer.Typer) -> None:
    @app.command("eval")
    def eval_(
        benchmark: str = typer.Option(..., "--benchmark", "-b", help="ciebench:PATH, smartedit:PATH or magicbrush:PATH"),
        store: Optional[str] = typer.Option(None, "--store", "-s", help="artifact store URL"),
        profile: Optional[str] = ProfileOpt,
        config_file: Optional[str] = ConfigFileOpt,
        limit: Optional[int] = typer.Option(None, "--limit", "-n", help="only the first N samples"),
        results: Optional[str] = typer.Option(None, "--results", help="re-use this results.parquet instead of editing"),
        protocol: Optional[str] = typer.Option(None, "--protocol", help="masked (default) or smartedit"),
        verbose: bool = VerboseOpt,
    ) -> None:
        """Run (or re-use) edit_dataset on a benchmark, compute per-sample metrics into
        metrics.parquet and write report.md / report.html. The last line is the report folder's URI.

        Exit codes: 0 every sample's edit ended ok or no_target; 1 some edit failed, was invalid or
        cancelled (the report is still written, its URI still the last line); 2 a usage or
        configuration error before any sample (bad benchmark, missing model)."""
        from cli.live import exit_code, quiet_progress_bars

        quiet_progress_bars(verbose)
        from cli.commands.run import run_dataset_flow
        from flows.evaluate import evaluate

        if protocol not in (None, "masked", "smartedit"):
            raise fail("--protocol must be masked or smartedit", 2)
        config = read_config_file(config_file)
        uri = run_dataset_flow(evaluate, f"evaluate {benchmark}", verbose, usage=(ValueError,), benchmark=benchmark,
                               store=store,
                               profile=profile, config=config, limit=limit, results_uri=results, protocol=protocol)
        typer.echo(f"metrics: {uri}/metrics.parquet", err=True)
        typer.echo(f"report:  {uri}/report.html", err=True)
        from tasks import keys, runtime

        st = runtime.store(runtime.resolve(profile, config, store))
        metrics = st.get_table(keys.eval_key(st.key_for(uri), "metrics"))
        statuses = [s or "failed" for s in metrics.column("edit_status").to_pylist()] \
            if "edit_status" in metrics.column_names else []
        typer.echo(uri)
        raise typer.Exit(exit_code(statuses))

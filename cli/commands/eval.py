"""`cielr eval --benchmark NAME:PATH --store URL`: edit a benchmark and score it."""

from __future__ import annotations

from typing import Optional

import typer

from cli.commands.common import ConfigFileOpt, ProfileOpt, fail, read_config_file


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
    ) -> None:
        """Run (or re-use) edit_dataset on a benchmark, compute per-sample metrics into
        metrics.parquet and write report.md / report.html. The last line is the report folder's URI."""
        from flows.evaluate import evaluate

        if protocol not in (None, "masked", "smartedit"):
            raise fail("--protocol must be masked or smartedit", 2)
        config = read_config_file(config_file)
        try:
            uri = evaluate(benchmark=benchmark, store=store, profile=profile, config=config, limit=limit,
                           results_uri=results, protocol=protocol)
        except ValueError as e:
            raise fail(str(e), 2) from e
        except Exception as e:  # noqa: BLE001
            raise fail(f"{type(e).__name__}: {e}") from e
        typer.echo(f"metrics: {uri}/metrics.parquet", err=True)
        typer.echo(f"report:  {uri}/report.html", err=True)
        typer.echo(uri)

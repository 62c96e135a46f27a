"""`cielr models tiny [DIR]`."""

from __future__ import annotations

from typing import Optional

import typer

from cli.commands.common import ConfigFileOpt, settings_or_exit


def register(app: typer.Typer) -> None:
    models_app = typer.Typer(help="Model weights: make the tiny random-weight set.", no_args_is_help=True)

    @models_app.command("tiny")
    def tiny(
        directory: Optional[str] = typer.Argument(None, help="where to write (default: models_dir of the config)"),
        force: bool = typer.Option(False, "--force", help="rewrite families that already exist"),
        config_file: Optional[str] = ConfigFileOpt,
    ) -> None:
        """Write toy-size random-weight SAM2 / OWLv2 / DepthAnything / LLM / inpainting / metric models.

        They use the real architectures and load through the real loaders, so `--profile tiny` runs
        everything offline. Their edits are meaningless: they exist to exercise the pipeline.
        """
        from cielr_core.tiny import make_all

        settings = settings_or_exit("tiny", config_file)
        target = directory or settings.models_dir
        made = make_all(target, force=force, progress=lambda fam: typer.echo(f"making tiny {fam} ...", err=True))
        for fam, path in made.items():
            typer.echo(f"{fam}: {path}")
        if directory:
            typer.echo(f"(use them with CIELR_MODELS_DIR={directory} --profile tiny)", err=True)

    app.add_typer(models_app, name="models")

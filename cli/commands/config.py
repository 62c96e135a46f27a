"""`cielr config show`."""

from __future__ import annotations

from typing import Optional

import typer

from cli.commands.common import ConfigFileOpt, ProfileOpt, settings_or_exit


def register(app: typer.Typer) -> None:
    config_app = typer.Typer(help="Inspect the effective configuration.", no_args_is_help=True)

    @config_app.command("show")
    def show(
        profile: Optional[str] = ProfileOpt,
        config_file: Optional[str] = ConfigFileOpt,
        digests: bool = typer.Option(False, "--digests", help="also print each stage's config digest"),
    ) -> None:
        """Print the effective config as YAML (defaults < profile < file < CIELR_* env), secrets masked."""
        settings = settings_or_exit(profile, config_file)
        typer.echo(settings.to_yaml(), nl=False)
        if digests:
            import yaml

            typer.echo(yaml.safe_dump({"digests": settings.stage_digests()}, sort_keys=False), nl=False)

    app.add_typer(config_app, name="config")

"""`cielr edit IMAGE "INSTRUCTION"`: one image through the edit_image flow."""

from __future__ import annotations

import os
from typing import Optional

import typer

from cli.commands.common import ConfigFileOpt, ProfileOpt, VerboseOpt, fail, flow_error, read_config_file

OUTPUTS = ("edited.png", "mask.png", "overlay.png", "ssr.json", "plan.json", "trace.json")


def register(app: typer.Typer) -> None:
    @app.command("edit")
    def edit(
        image: str = typer.Argument(..., help="image path or URL (s3:// uses the store's credentials)"),
        instruction: str = typer.Argument(..., help='implicit instruction, e.g. "remove the object that tells the time"'),
        profile: Optional[str] = ProfileOpt,
        config_file: Optional[str] = ConfigFileOpt,
        store: Optional[str] = typer.Option(None, "--store", "-s", help="artifact store URL (cache and outputs)"),
        out: str = typer.Option("cielr-out", "--out", "-o", help="folder to copy the outputs into"),
        seed: Optional[int] = typer.Option(None, "--seed", help="inpainting seed (default from config)"),
        verbose: bool = VerboseOpt,
    ) -> None:
        """Perceive -> reason -> edit one image; writes edited.png, mask.png, overlay.png, ssr.json, plan.json,
        trace.json into --out. mask.png is exactly the region allowed to differ from the input.

        Exit codes: 0 edited (or no target found); 1 the image failed; 2 a usage or configuration error
        (missing model, bad option) before any stage."""
        from cli.live import run_console
        from flows.edit_image import edit_image
        from tasks import runtime

        config = read_config_file(config_file)
        if "://" not in image:
            image = os.path.abspath(image)
        with run_console("edit_image", verbose, rows=False):
            try:
                state = edit_image(image_uri=image, instruction=instruction, profile=profile, config=config,
                                   store=store, seed=seed, return_state=True)
                row = state.result(raise_on_failure=False)
                if isinstance(row, BaseException):
                    raise row
            except Exception as e:  # noqa: BLE001 - the message here, the traceback in the log
                raise flow_error(e) from None
        if row["status"] in ("failed", "cancelled"):
            raise fail(row["error"])
        st = runtime.store(runtime.resolve(profile, config, store))
        os.makedirs(out, exist_ok=True)
        for name in OUTPUTS:
            stem = name.split(".")[0]
            data = st.get_bytes(st.key_for(row[f"{stem}_uri"]))
            with open(os.path.join(out, name), "wb") as f:
                f.write(data)
        typer.echo(f"status: {row['status']}" + (f" ({row['error']})" if row.get("error") else ""), err=True)
        checked = {True: "yes", False: "NO (the judge rejected an edit; see trace.json)", None: "not checked"}
        typer.echo(f"steps edited: {row.get('n_edited_steps', 0)} of {row.get('n_steps', 0)}; "
                   f"verified: {checked[row.get('verified')]}; "
                   f"cache hits {row['cache_hits']}/{row['task_runs']}", err=True)
        typer.echo(os.path.abspath(out))

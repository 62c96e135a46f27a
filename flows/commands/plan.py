"""`cielr plan SSR_JSON "INSTRUCTION"`: reason an edit plan from a saved SSR (no Prefect run)."""

from __future__ import annotations

import json
import os
from typing import Optional

import typer

from flows.commands.common import ConfigFileOpt, ProfileOpt, fail, settings_or_exit


def register(app: typer.Typer) -> None:
    @app.command("plan")
    def plan(
        ssr_json: str = typer.Argument(..., help="ssr.json written by perception; its masks/<id>.png lie beside it"),
        instruction: str = typer.Argument(..., help='implicit instruction, e.g. "remove the largest fruit"'),
        profile: Optional[str] = ProfileOpt,
        config_file: Optional[str] = ConfigFileOpt,
        image: Optional[str] = typer.Option(
            None, "--image", "-i", help="the image the SSR describes (needed for semantic updates of the SSR)"
        ),
        trace: Optional[str] = typer.Option(None, "--trace", "-t", help="also write the reasoning trace JSON here"),
        out: Optional[str] = typer.Option(None, "--out", "-o", help="also write plan.json and trace.json into DIR"),
    ) -> None:
        """Decompose the instruction and reason each sub-task over the SSR; prints the EditPlan as JSON.

        Without --image, semantic SSR updates are skipped (the trace says so); spatial updates
        (built-in relations, sandboxed code) still run."""
        from pydantic import ValidationError

        from cielr_core.models import ModelUnavailableError
        from cielr_core.reasoning import InvalidAnswerError, LLMError, Reasoner, Trace, make_llm
        from cielr_core.ssr import SSR, Scene
        from storage.store import decode_mask_png

        settings = settings_or_exit(profile, config_file)
        try:
            with open(ssr_json, "rb") as f:
                ssr = SSR.from_json(f.read())
        except OSError as e:
            raise fail(f"cannot read {ssr_json}: {e.strerror or e}", 2) from e
        except ValidationError as e:
            raise fail(f"{ssr_json} is not a valid SSR: {e.error_count()} error(s), first: {e.errors()[0]['msg']}", 2) from e
        base = os.path.dirname(os.path.abspath(ssr_json))
        masks = {}
        for oid, obj in ssr.objects.items():
            path = os.path.join(base, obj.mask)
            try:
                with open(path, "rb") as f:
                    masks[oid] = decode_mask_png(f.read())
            except OSError as e:
                raise fail(f"mask of object {oid} not found at {path}: {e.strerror or e}", 2) from e
        try:
            scene = Scene(ssr=ssr, masks=masks)
        except ValueError as e:
            raise fail(str(e), 2) from e

        rgb = None
        updater = None
        if image:
            from cielr_core.images import BadImageError, decode_image_file

            try:
                rgb = decode_image_file(image, max_pixels=settings.limits.max_image_pixels,
                                        max_bytes=settings.limits.max_image_bytes)
            except BadImageError as e:
                raise fail(str(e), 2) from e
            if rgb.shape[:2] != (ssr.height, ssr.width):
                raise fail(f"--image is {rgb.shape[1]}x{rgb.shape[0]} but the SSR describes "
                           f"{ssr.width}x{ssr.height}", 2)
            try:
                from cielr_core.perception import Perceiver

                updater = Perceiver(settings).update_semantic
            except ImportError as e:
                typer.echo(f"warning: perception is unavailable ({e}); semantic updates are skipped", err=True)

        tr = Trace()
        traces = [trace] + ([os.path.join(out, "trace.json")] if out else [])
        if out:
            os.makedirs(out, exist_ok=True)
        try:
            llm = make_llm(settings.llm, settings)
            result = Reasoner(settings, llm, updater=updater, trace=tr).plan(instruction, rgb, scene)
        except (InvalidAnswerError, LLMError, ModelUnavailableError) as e:
            _write(traces, tr.to_json_bytes())
            raise fail(f"{type(e).__name__}: {e}") from e
        _write(traces, tr.to_json_bytes())
        if out:
            _write([os.path.join(out, "plan.json")], result.canonical_json())
        typer.echo(json.dumps(result.model_dump(mode="json"), indent=2))


def _write(paths: list[Optional[str]], data: bytes) -> None:
    for path in paths:
        if path:
            with open(path, "wb") as f:
                f.write(data)

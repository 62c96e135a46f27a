"""`cielr plan IMAGE|SSR_JSON "INSTRUCTION"`: reason an edit plan (no Prefect run).

With an image, it is perceived first (SSR v0) and semantic updates of the SSR can re-run
perception on it; with an ``ssr.json`` (from `cielr ssr --out`) the saved SSR is used."""

from __future__ import annotations

import json
import os
from typing import Optional

import typer

from cli.commands.common import ConfigFileOpt, ProfileOpt, fail, settings_or_exit


def register(app: typer.Typer) -> None:
    @app.command("plan")
    def plan(
        source: str = typer.Argument(
            ..., help="an image, or an ssr.json written by `cielr ssr --out` (its masks/<id>.png beside it)"),
        instruction: str = typer.Argument(..., help='implicit instruction, e.g. "remove the largest fruit"'),
        profile: Optional[str] = ProfileOpt,
        config_file: Optional[str] = ConfigFileOpt,
        image: Optional[str] = typer.Option(
            None, "--image", "-i", help="the image the SSR describes (needed for semantic updates of the SSR)"
        ),
        trace: Optional[str] = typer.Option(None, "--trace", "-t", help="also write the reasoning trace JSON here"),
        out: Optional[str] = typer.Option(
            None, "--out", "-o", help="write plan.json and trace.json into DIR (default: the store, under plan/)"),
    ) -> None:
        """Decompose the instruction and reason each sub-task over the SSR; prints the EditPlan as JSON
        and writes plan.json and trace.json (to --out, default the configured store).

        Given an ssr.json without --image, semantic SSR updates are skipped (the trace says so);
        spatial updates (built-in relations, sandboxed code) still run."""

        from cielr_core.models import ModelUnavailableError
        from cielr_core.reasoning import InvalidAnswerError, LLMError, Reasoner, Trace, make_llm

        settings = settings_or_exit(profile, config_file)
        if not source.lower().endswith(".json"):
            if image:
                raise fail("--image goes with an ssr.json; given an image, it is perceived directly", 2)
            scene, rgb, updater = _perceive(source, settings)
        else:
            scene, rgb, updater = _load_ssr(source, image, settings)
        tr = Trace()
        store_prefix = None
        if not out:
            from storage import ArtifactStore
            from tasks import keys

            st = ArtifactStore.from_config(settings.store)
            store_prefix = keys.plan_prefix(scene.ssr.digest(), instruction, settings)
        traces = [trace] + ([os.path.join(out, "trace.json")] if out else [])
        if out:
            os.makedirs(out, exist_ok=True)
        try:
            llm = make_llm(settings.llm, settings)
            result = Reasoner(settings, llm, updater=updater, trace=tr).plan(instruction, rgb, scene)
        except (InvalidAnswerError, LLMError, ModelUnavailableError) as e:
            _write(traces, tr.to_json_bytes())
            if store_prefix:
                st.put_bytes(keys.plan_trace_key(store_prefix), tr.to_json_bytes())
            raise fail(f"{type(e).__name__}: {e}") from e
        _write(traces, tr.to_json_bytes())
        if out:
            _write([os.path.join(out, "plan.json")], result.canonical_json())
        else:
            st.put_bytes(keys.plan_trace_key(store_prefix), tr.to_json_bytes())
            st.put_bytes(keys.plan_key(store_prefix), result.canonical_json())
            typer.echo(f"plan.json and trace.json: {st.uri_for(store_prefix)}", err=True)
        typer.echo(json.dumps(result.model_dump(mode="json"), indent=2))


def _perceive(path: str, settings):
    from cielr_core.images import BadImageError, decode_image_file, image_digest
    from cielr_core.models import ModelUnavailableError
    from cielr_core.perception import Perceiver

    try:
        rgb = decode_image_file(path, max_pixels=settings.limits.max_image_pixels,
                                max_bytes=settings.limits.max_image_bytes, min_side=settings.limits.min_image_side,
                                max_aspect=settings.limits.max_aspect_ratio)
    except BadImageError as e:
        raise fail(str(e), 2) from e
    try:
        perceiver = Perceiver(settings)
        scene = perceiver.perceive(rgb, image_sha256=image_digest(rgb))
    except ModelUnavailableError as e:
        raise fail(str(e)) from e
    return scene, rgb, perceiver.update_semantic


def _load_ssr(ssr_json: str, image: Optional[str], settings):
    from pydantic import ValidationError

    from cielr_core.masks import decode_mask_png
    from cielr_core.ssr import SSR, Scene

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
                                    max_bytes=settings.limits.max_image_bytes, min_side=settings.limits.min_image_side,
                                    max_aspect=settings.limits.max_aspect_ratio)
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
    return scene, rgb, updater


def _write(paths: list[Optional[str]], data: bytes) -> None:
    for path in paths:
        if path:
            with open(path, "wb") as f:
                f.write(data)

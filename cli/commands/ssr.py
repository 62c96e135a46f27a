"""`cielr ssr IMAGE`: perceive one image into its structured semantic representation."""

from __future__ import annotations

import os
from typing import Optional

import typer

from cli.commands.common import ConfigFileOpt, ProfileOpt, fail, settings_or_exit


def register(app: typer.Typer) -> None:
    @app.command("ssr")
    def ssr(
        image: str = typer.Argument(..., help="image file (PNG, JPEG, WebP, ...)"),
        profile: Optional[str] = ProfileOpt,
        config_file: Optional[str] = ConfigFileOpt,
        out: Optional[str] = typer.Option(
            None, "--out", "-o",
            help="folder to write ssr.json, masks/ and overlay.png into "
            "(default: the configured store, under ssr/<image sha>/<perception digest>/)",
        ),
    ) -> None:
        """SAM2 masks + OWLv2 labels + DepthAnything depth -> ssr.json, masks/<id>.png, overlay.png.

        Prints the SSR digest (sha256 of the canonical ssr.json) on stdout."""
        from cielr_core.images import BadImageError, decode_image_file, image_digest
        from cielr_core.models import ModelUnavailableError
        from cielr_core.perception import Perceiver, render_overlay
        from cielr_core.ssr import save_scene
        from storage import ArtifactStore, StoreError
        from tasks import keys

        s = settings_or_exit(profile, config_file)
        try:
            rgb = decode_image_file(image, max_pixels=s.limits.max_image_pixels, max_bytes=s.limits.max_image_bytes,
                                    min_side=s.limits.min_image_side, max_aspect=s.limits.max_aspect_ratio)
        except BadImageError as e:
            raise fail(str(e), 2) from e
        sha = image_digest(rgb)
        try:
            scene = Perceiver(s).perceive(rgb, image_sha256=sha)
        except ModelUnavailableError as e:
            raise fail(str(e)) from e
        if out:
            os.makedirs(out, exist_ok=True)
            store, prefix = ArtifactStore(os.path.abspath(out)), None
        else:
            store = ArtifactStore.from_config(s.store)
            prefix = keys.ssr_prefix(sha, s)  # where the pipeline's merge-ssr task writes it too
        try:
            if prefix:
                digest = save_scene(store, prefix, scene)
                store.put_png(keys.overlay_key(prefix), render_overlay(rgb, scene))
                where = store.uri_for(prefix)
            else:  # the folder itself is the SSR's root: masks first, ssr.json last (= complete)
                for oid, obj in scene.ssr.objects.items():
                    store.put_mask(obj.mask, scene.masks[oid])
                store.put_png("overlay.png", render_overlay(rgb, scene))
                store.put_bytes("ssr.json", scene.ssr.canonical_json())
                digest = scene.ssr.digest()
                where = store.root
        except StoreError as e:
            raise fail(str(e)) from e
        typer.echo(f"{len(scene.ssr.objects)} objects in {scene.ssr.width}x{scene.ssr.height} image; "
                   f"written to {where}", err=True)
        typer.echo(digest)

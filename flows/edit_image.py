"""`edit_image`: one image and one implicit instruction through the CIELR DAG.

Every model the settings need is checked first (one message, before any stage). A failed image ends
the flow run ``Failed`` with the error as its message and the result row as its data
(``return_state=True`` and ``state.result(raise_on_failure=False)`` read it)."""

from __future__ import annotations

from typing import Any

import os

from prefect import flow, get_run_logger
from prefect.runtime import flow_run
from prefect.states import Failed

from flows.pipeline import run_image
from tasks import progress, runtime
from tasks.stages import Stages


def _image_run_name() -> str:
    uri = str((flow_run.parameters or {}).get("image_uri") or "image")
    return os.path.basename(uri.rstrip("/")) or uri


def image_id_of(image_uri: str) -> str:
    """The row's image id, and the name its task runs carry (``segment[photo]`` for .../photo.jpg)."""
    name = os.path.basename(str(image_uri).rstrip("/"))
    return os.path.splitext(name)[0] or name or "image"


@flow(name="edit-image", log_prints=False, flow_run_name=_image_run_name)
def edit_image(
    image_uri: str,
    instruction: str,
    profile: str | None = None,
    config: dict[str, Any] | None = None,
    store: str | None = None,
    seed: int | None = None,
) -> dict[str, Any]:
    """Perceive -> reason -> edit one image. Returns the result row (status, error, output URIs).

    Args:
        image_uri: The image to edit: a local path, file:// or s3:// URL (s3 uses the store's
            endpoint and credentials).
        instruction: The implicit instruction, e.g. "remove the object that tells the time".
        profile: Config profile: default (real model ids), tiny (toy random-weight models, offline)
            or paper (the paper's protocol). Empty: CIELR_PROFILE, else default.
        config: Settings to apply over the profile, as the YAML config file would (nested
            sections, e.g. {"editing": {"steps": 20}}); CIELR_* variables still win.
        store: Artifact store URL for the cache and the outputs (a path, file:// or
            s3://bucket/prefix). Empty: the configured store.url.
        seed: Inpainting seed. Empty: editing.seed from the config.
    """
    from cielr_core.preflight import check_models

    settings = runtime.resolve(profile, config, store)
    logger = get_run_logger()
    check_models(settings)
    with progress.stop_on_sigterm():
        row = run_image(Stages.for_settings(settings), image_id=image_id_of(image_uri), image_uri=image_uri,
                        instruction=instruction, seed=seed)
    progress.clear_stop()
    if row.status in ("failed", "cancelled"):
        logger.error("edit %s: %s", row.status, row.error)
        return Failed(message=f"{row.status}: {row.error}", data=row.model_dump(mode="json"))
    else:
        logger.info("%s: %s (cache hits %d/%d)", row.status, row.edited_uri, row.cache_hits, row.task_runs)
    return row.model_dump(mode="json")

"""`edit_image`: one image and one implicit instruction through the CIELR DAG."""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger

from cielr_core.config import load_settings
from flows.pipeline import Stages, run_image


def resolve_settings(profile: str | None, config: dict[str, Any] | None, store: str | None):
    """Flow parameters -> Settings: ``config`` takes the YAML file's place (so CIELR_* env still
    wins over it, as on the command line); ``store`` is an explicit override."""
    overrides = {"store": {"url": store}} if store else None
    return load_settings(profile=profile, config_data=config, overrides=overrides)


@flow(name="edit-image", log_prints=False)
def edit_image(
    image_uri: str,
    instruction: str,
    profile: str | None = None,
    config: dict[str, Any] | None = None,
    store: str | None = None,
    seed: int | None = None,
) -> dict[str, Any]:
    """Perceive -> reason -> edit one image. Returns the result row (status, error, output URIs)."""
    settings = resolve_settings(profile, config, store)
    logger = get_run_logger()
    row = run_image(Stages.for_settings(settings), settings, image_id="image", image_uri=image_uri,
                    instruction=instruction, seed=seed)
    if row["status"] == "failed":
        logger.error("edit failed: %s", row["error"])
    else:
        logger.info("%s: %s (cache hits %d/%d)", row["status"], row.get("edited_uri"), row["cache_hits"], row["task_runs"])
    return row

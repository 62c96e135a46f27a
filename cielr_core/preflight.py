"""Before the first row: is every model the run's settings need at hand?

A missing model is a run-level problem, not a per-row one: :func:`check_models` looks once for every
model the configuration uses (a local path exists, or the hub id is in the Hugging Face cache under
``HF_HOME``) and raises one :class:`ModelsUnavailable` listing each missing model with its own way
out (the kind's path setting, ``hf download <id>``). A hub id that is not cached is fine while the hub
is reachable (the loader downloads it); ``HF_HUB_OFFLINE=1`` means it is not, and an unreachable hub
is detected once, with a short timeout, after which the process runs offline
(``HF_HUB_OFFLINE=1``), so no loader pays the hub's retries again.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from cielr_core.config import ModelRef, Settings
from cielr_core.models import ModelUnavailableError, PATH_SETTING, download_hint, unavailable_message

HUB_PROBE_TIMEOUT_S = 3.0
_hub_state: dict[str, bool] = {}


@dataclass(frozen=True)
class Need:
    """A model the run's settings use: its kind (cielr_core.models' kind names), the reference, and
    the file inside the hub repo when the loader wants one file (LaMa)."""

    kind: str
    ref: ModelRef
    filename: str | None = None


class ModelsUnavailable(ModelUnavailableError):
    """Models the run needs are missing; raised before the first row (never retried)."""

    def __init__(self, messages: list[str]):
        self.messages = messages
        head = f"{len(messages)} model(s) this run needs are not available (checked once, before the first row)"
        super().__init__(head + ":\n" + "\n".join(f"  - {m}" for m in messages))


def needed_models(s: Settings) -> list[Need]:
    """Every model the per-image pipeline may load under these settings (what `cielr doctor` checks)."""
    from cielr_core.reasoning.schemas import operations_for_prompt_version

    ed = s.editing
    needs = [Need("sam2", s.perception.sam2.model), Need("owlv2", s.perception.owlv2.model),
             Need("depth", s.perception.depth.model)]
    if s.llm.backend == "transformers":
        needs.append(Need("llm", s.llm.model))
    if "diffusers" in (ed.backend, ed.remove_backend):
        needs.append(Need("inpaint", ed.model))
    if ed.remove_backend == "lama":  # auto: a missing LaMa only means removal falls back
        needs.append(Need("lama", ed.lama.model, ed.lama.filename))
    if {"transform", "global"} & set(operations_for_prompt_version(s.reasoning.prompt_version)):
        needs.append(Need("instruct", ed.instruct.model))
    return needs


def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("TRANSFORMERS_OFFLINE") == "1"


def hub_reachable(timeout_s: float = HUB_PROBE_TIMEOUT_S) -> bool:
    """Whether the Hugging Face hub answers (once per process and endpoint; False when offline)."""
    if hub_offline():
        return False
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")
    if endpoint not in _hub_state:
        import httpx

        try:
            httpx.head(endpoint, timeout=timeout_s)
            _hub_state[endpoint] = True
        except httpx.HTTPError:
            _hub_state[endpoint] = False
    return _hub_state[endpoint]


def hf_cache_dir() -> str:
    """The hub cache as it is now (HF_HOME at call time, not at huggingface_hub's import)."""
    from huggingface_hub.constants import HF_HUB_CACHE

    return os.path.join(os.environ["HF_HOME"], "hub") if os.environ.get("HF_HOME") else HF_HUB_CACHE


def in_hf_cache(repo_id: str, filename: str | None = None, revision: str | None = None) -> bool:
    """Whether the hub repo (or one file of it) is in the Hugging Face cache."""
    cache = hf_cache_dir()
    if filename:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(repo_id, filename, cache_dir=cache, revision=revision)
        return isinstance(found, str) and os.path.isfile(found)
    folder = os.path.join(cache, "models--" + repo_id.replace("/", "--"), "snapshots")
    return os.path.isdir(folder) and any(os.scandir(folder))


def model_present(s: Settings, need: Need) -> tuple[bool, str]:
    """(present, source): a local path that exists, or a hub id in the cache."""
    source = s.resolve_model(need.ref)
    if need.ref.path:
        return os.path.exists(source), source
    return in_hf_cache(source, need.filename, need.ref.revision), source


def missing_message(s: Settings, need: Need, source: str) -> str:
    """The missing model with its own way out (the kind's setting; `hf download`; the tiny models)."""
    setting = PATH_SETTING.get(need.kind, "its model path setting")
    if need.ref.path:
        fix = (f"cielr models tiny (writes the tiny models into models_dir {s.models_dir})" if s.profile == "tiny"
               else f"put the model at {source}, or point {setting} at a local copy")
        return f"{need.kind} model path {source!r} does not exist. To fix: {fix}"
    where = ("the Hugging Face hub did not answer" if any(v is False for v in _hub_state.values())
             else "the hub is offline (HF_HUB_OFFLINE=1)")
    cause = f"not in the Hugging Face cache ({hf_cache_dir()}) and {where}"
    if need.filename:
        return (f"{need.kind} model {source!r} ({need.filename}) is not available: {cause}. To fix: "
                f"{download_hint(source, need.filename)} where a hub is reachable, or set {setting} to a local copy")
    return unavailable_message(need.kind, source, need.ref.revision, cause)


def missing_models(s: Settings) -> list[str]:
    """One message per model the settings need that cannot be loaded now (empty when all can)."""
    absent = [(n, src) for n in needed_models(s) for ok, src in [model_present(s, n)] if not ok]
    if any(not n.ref.path for n, _ in absent) and not hub_reachable():
        os.environ["HF_HUB_OFFLINE"] = "1"  # loaders of this process go straight to the cache from now on
    return [missing_message(s, n, src) for n, src in absent if n.ref.path or hub_offline()]


def check_models(s: Settings) -> None:
    """Raise :class:`ModelsUnavailable` (one message for all) when a needed model is missing."""
    messages = missing_models(s)
    if messages:
        raise ModelsUnavailable(messages)

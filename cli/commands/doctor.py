"""`cielr doctor`: is this machine ready? Each check says how to fix what is not."""

from __future__ import annotations

import os
from typing import Optional

import typer

from cli.commands.common import ConfigFileOpt, ProfileOpt, settings_or_exit


def _model_refs(s):
    """(name, ref, kind): kind is cielr_core.models' kind, whose own path setting the fix names."""
    return [
        ("SAM2", s.perception.sam2.model, "sam2"),
        ("OWLv2", s.perception.owlv2.model, "owlv2"),
        ("DepthAnything", s.perception.depth.model, "depth"),
        ("LLM", s.llm.model, "llm") if s.llm.backend == "transformers" else None,
        ("inpainter", s.editing.model, "inpaint") if "diffusers" in (s.editing.backend, s.editing.remove_backend)
        else None,
    ]


def model_present(s, ref) -> tuple[bool, str]:
    source = s.resolve_model(ref)
    if ref.path:
        return os.path.exists(source), source
    try:
        from huggingface_hub import scan_cache_dir
        from huggingface_hub.constants import HF_HUB_CACHE

        # HF_HOME as it is now (as the LaMa loader reads it), not as it was when huggingface_hub was imported
        cache = os.path.join(os.environ["HF_HOME"], "hub") if os.environ.get("HF_HOME") else HF_HUB_CACHE
        repos = {r.repo_id for r in scan_cache_dir(cache).repos}
    except Exception:  # noqa: BLE001 - no cache yet
        repos = set()
    return source in repos, source


def editing_weights(s) -> list[tuple[bool, str, str, bool]]:
    """(present, what, fix, warn_only) for the editing backends' own weights that the configuration
    uses: the LaMa removal checkpoint (``editing.remove_backend`` ``lama``, or ``auto``, where a
    missing one only means that removal falls back to SD inpainting, then OpenCV) and the
    instruction-editing pipeline (the ``transform`` and ``global`` steps of prompt set 3)."""
    from cielr_core.editing.lama import lama_checkpoint
    from cielr_core.models import ModelUnavailableError
    from cielr_core.reasoning.schemas import operations_for_prompt_version

    out = []
    ed = s.editing
    if ed.remove_backend in ("auto", "lama"):
        ref = ed.lama.model
        source = s.resolve_model(ref)
        try:
            found, ok = lama_checkpoint(source, ed.lama.filename, ref.revision), True
        except ModelUnavailableError:
            found, ok = source if ref.path else f"{source} ({ed.lama.filename})", False
        if s.profile == "tiny":
            fix = f"cielr models tiny (editing.lama.model.path: {source})"
        elif ref.path:
            fix = (f"put a big-lama.pt TorchScript file at {source}, or fix editing.lama.model.path "
                   "(CIELR_EDITING__LAMA__MODEL__PATH)")
        else:
            fix = (f"hf download {ref.id} {ed.lama.filename} (where a hub is reachable), or set "
                   "editing.lama.model.path (CIELR_EDITING__LAMA__MODEL__PATH) to a big-lama.pt TorchScript file")
        auto = ed.remove_backend == "auto"
        what = f"LaMa weights (removal): {found}" + ("" if ok else " not found")
        if not ok and auto:
            what += "; `remove` falls back to SD inpainting, then OpenCV (editing.remove_backend auto)"
        out.append((ok, what, fix, auto))
    if {"transform", "global"} & set(operations_for_prompt_version(s.reasoning.prompt_version)):
        ref = ed.instruct.model
        ok, source = model_present(s, ref)
        if s.profile == "tiny":
            fix = f"cielr models tiny (editing.instruct.model.path: {source})"
        elif ref.path:
            fix = (f"put a diffusers pipeline folder at {source}, or fix editing.instruct.model.path "
                   "(CIELR_EDITING__INSTRUCT__MODEL__PATH)")
        else:
            fix = (f"hf download {ref.id} (where a hub is reachable), or set editing.instruct.model.path "
                   "(CIELR_EDITING__INSTRUCT__MODEL__PATH) to a local diffusers folder")
        out.append((ok, f"instruction-editing weights (transform, global): {source}" + ("" if ok else " not found"),
                    fix, False))
    return out


def register(app: typer.Typer) -> None:
    @app.command("doctor")
    def doctor(profile: Optional[str] = ProfileOpt, config_file: Optional[str] = ConfigFileOpt) -> None:
        """Check GPU, model weights, the spatial-code sandbox, the store and the Prefect API."""
        from cielr_core.models import PATH_SETTING

        s = settings_or_exit(profile, config_file)
        problems = 0

        def report(ok: bool, what: str, fix: str = "", warn_only: bool = False) -> None:
            nonlocal problems
            problems += 0 if ok or warn_only else 1
            mark = "ok" if ok else ("--" if warn_only else "!!")
            typer.echo(f"[{mark}] {what}" + ("" if ok or not fix else f"\n     fix: {fix}"))

        import torch

        if torch.cuda.is_available():
            report(True, f"GPU: {torch.cuda.get_device_name(0)} (CUDA {torch.version.cuda})")
        else:
            report(False, "GPU: none visible to torch (CPU only: fine for --profile tiny, slow for real models)",
                   "run on a machine with an NVIDIA GPU and a CUDA build of torch (scripts/setup.sh installs one)",
                   warn_only=s.profile == "tiny")
        for entry in _model_refs(s):
            if entry is None:
                continue
            name, ref, kind = entry
            ok, source = model_present(s, ref)
            setting = PATH_SETTING[kind]
            fix = ("cielr models tiny" if s.profile == "tiny" else
                   f"hf download {ref.id} (where a hub is reachable), or point {setting} at a local copy"
                   if not ref.path else f"put the model at {source}, or fix {setting}")
            report(ok, f"{name} weights: {source}" + ("" if ok else " not found"), fix)
        for ok, what, fix, warn_only in editing_weights(s):
            report(ok, what, fix, warn_only=warn_only)
        from cielr_core.reasoning.sandbox import sandbox_status

        sb = sandbox_status(s.reasoning.sandbox)
        if not s.reasoning.allow_sandbox:
            report(True, "sandbox: LLM-written spatial code is disabled (reasoning.allow_sandbox = false)")
        elif sb.mode == "os":
            report(True, f"sandbox: OS isolation for LLM-written spatial code ({sb.detail})")
        elif sb.mode == "python-only":
            report(False, f"sandbox: {sb.detail}", "install bubblewrap and libseccomp2 for the OS layer",
                   warn_only=True)
        else:
            report(False, f"sandbox: {sb.detail}",
                   "apt-get install bubblewrap libseccomp2 (in a container: allow namespaces, see docs/security.md); "
                   "built-in spatial relations still work", warn_only=True)
        from storage import ArtifactStore, StoreError

        try:
            st = ArtifactStore.from_config(s.store)
            st.check()
            report(True, f"store: {st.display_url} reachable")
        except StoreError as e:
            report(False, f"store: {e}", "check CIELR_STORE__URL / CIELR_STORE__ENDPOINT_URL and credentials")
        api = os.environ.get("PREFECT_API_URL")
        if not api:
            from prefect.settings import PREFECT_API_URL

            api = PREFECT_API_URL.value()
        if not api:
            report(True, "Prefect API: ephemeral (started in-process per run; no dashboard history)")
        else:
            import httpx

            try:
                r = httpx.get(api.rstrip("/") + "/health", timeout=5)
                report(r.status_code == 200, f"Prefect API: {api} answered {r.status_code}",
                       "start it with `prefect server start`")
            except httpx.HTTPError as e:
                report(False, f"Prefect API: {api} unreachable ({type(e).__name__})",
                       "start it with `prefect server start`, or unset PREFECT_API_URL for the ephemeral API")
        typer.echo("all good" if problems == 0 else f"{problems} problem(s)")
        raise typer.Exit(0 if problems == 0 else 1)

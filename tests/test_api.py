"""The Python API, `from cielr_core import edit`: the same outputs as `cielr edit`, without Prefect.

The byte comparison runs both on the tiny random-weight models (profile tiny): the command line
through the edit_image flow (in-process, on the session's Prefect harness, with a store), the API
in memory. Traces differ only in their timings (each event's ``t`` and each LLM call's
``latency_s``), which are compared with those removed.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

TIMINGS = {"t", "latency_s"}


def _without_timings(value):
    if isinstance(value, dict):
        return {k: _without_timings(v) for k, v in value.items() if k not in TIMINGS}
    if isinstance(value, list):
        return [_without_timings(v) for v in value]
    return value


@pytest.mark.slow
def test_the_api_and_cielr_edit_give_the_same_bytes(prefect_harness, tiny_models_dir, ciebench_dir, tmp_path,
                                                    monkeypatch):
    from cielr_core import EditResult, edit
    from cli.main import app

    monkeypatch.setenv("CIELR_MODELS_DIR", str(tiny_models_dir))
    image = ciebench_dir / "1" / "1.png"
    instruction = "remove the object that tells the time"
    cli_out = tmp_path / "cli"
    done = CliRunner().invoke(app, ["edit", str(image), instruction, "--profile", "tiny", "--store",
                                    str(tmp_path / "store"), "--out", str(cli_out), "--seed", "7"])
    assert done.exit_code == 0, done.output

    result = edit(str(image), instruction, profile="tiny", seed=7)
    assert isinstance(result, EditResult) and result.status in ("ok", "no_target"), result.error
    api_out = result.save(tmp_path / "api")
    for name in ("edited.png", "mask.png", "overlay.png", "ssr.json", "plan.json"):
        assert (api_out / name).read_bytes() == (cli_out / name).read_bytes(), name
    cli_trace = json.loads((cli_out / "trace.json").read_text())
    assert _without_timings(result.trace) == _without_timings(cli_trace)
    assert set(cli_trace) == {"decompose", "steps", "edits"} and cli_trace["steps"]
    # the in-memory values are what the files hold
    assert result.edited.dtype == np.uint8 and result.edited.shape[:2] == result.mask.shape
    assert result.n_steps == len(result.plan.steps) == len(cli_trace["steps"])
    assert set(result.ssr.masks) == set(result.ssr.ssr.objects)


def test_a_bad_image_fails_the_edit_with_its_stage_and_path(tmp_path):
    from cielr_core import edit

    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    result = edit(str(bad), "remove the cat", profile="tiny")
    assert result.status == "failed" and result.failed_stage == "load"
    assert result.error.startswith("load: BadImageError: ") and str(bad) in result.error
    assert result.files() == {}
    with pytest.raises(ValueError, match="nothing to save"):
        result.save(tmp_path / "out")
    missing = edit(str(tmp_path / "nope.jpg"), "remove the cat", profile="tiny")
    assert missing.status == "failed" and "no such file" in missing.error


def test_every_reasoner_of_the_pipeline_and_the_api_has_the_semantic_updater(tiny_settings):
    """A Reasoner built without perception's updater silently skips semantic updates; the stages
    (tasks) and the API both build theirs through cielr_core.pipeline.make_reasoner."""
    from cielr_core.perception import Perceiver
    from cielr_core.pipeline import make_reasoner
    from tasks import runtime
    from tasks.reasoning import _reasoner

    p = Perceiver(tiny_settings)
    assert make_reasoner(tiny_settings, llm=None, perceiver=p).updater == p.update_semantic
    assert _reasoner(tiny_settings).updater == runtime.perceiver(tiny_settings).update_semantic


def test_a_missing_model_raises_one_message_before_any_model_loads(ciebench_dir, tmp_path, monkeypatch):
    """As `cielr run` / `cielr edit`: the default profile offline (the suite sets HF_HUB_OFFLINE=1) with
    an empty HF cache raises ModelsUnavailable naming each model's own setting and `hf download`."""
    from cielr_core import api, edit
    from cielr_core.preflight import ModelsUnavailable

    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-hf"))
    loaded = []
    monkeypatch.setattr(api, "_perceiver", lambda s: loaded.append("perceiver"))
    with pytest.raises(ModelsUnavailable) as e:
        edit(str(ciebench_dir / "1" / "1.png"), "remove the object that tells the time", profile="default")
    msg = str(e.value)
    assert "`hf download facebook/sam2.1-hiera-large`" in msg and "CIELR_PERCEPTION__SAM2__MODEL__PATH" in msg
    assert "`hf download google/owlv2-base-patch16-ensemble`" in msg and "CIELR_PERCEPTION__OWLV2__MODEL__PATH" in msg
    assert loaded == []  # stopped before any model was loaded

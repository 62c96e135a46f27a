"""Where the OS layer cannot be had, LLM-written code does not run: spatial code is off, the trace and
`cielr doctor` say why, built-in relations still work; only `isolation: python-only` opts into the
weaker mode."""

from __future__ import annotations

import pytest
from test_reasoning import RGB, A, R, ScriptedLLM, settings
from typer.testing import CliRunner

from cielr_core.reasoning import Reasoner
from cielr_core.reasoning import sandbox as SB
from cielr_core.reasoning.sandbox import isolation
from security.common import LIMITS, make_scene

MISSING = LIMITS.model_copy(update={"bwrap_path": "/nonexistent/bwrap"})


@pytest.fixture(autouse=True)
def _fresh_probe():
    isolation.clear_cache()
    yield
    isolation.clear_cache()


def test_missing_bubblewrap_fails_closed():
    st = SB.sandbox_status(MISSING)
    assert not st.ok and st.mode == "off"
    assert "bubblewrap" in st.detail and "python-only" in st.detail
    with pytest.raises(SB.SandboxUnavailable, match="spatial code is off"):
        SB.run_code("result = {}", make_scene(), MISSING)


def test_the_loop_reasons_without_spatial_code_and_says_why():
    llm = ScriptedLLM([("assess", A("spatial")), ("assess", A("spatial")), ("reason", R(ids=[2]))])
    s = settings()
    s = s.model_copy(update={"reasoning": s.reasoning.model_copy(update={"sandbox": MISSING})})
    r = Reasoner(s, llm)
    step, final = r.plan_step("remove the apple", "i", RGB, make_scene())
    assert step.target_ids == [2]
    assert "size_rank" in final.ssr.objects[2].attributes  # built-in relations still ran
    notes = [e for e in r.trace.of_type("note") if e["what"] == "sandbox unavailable"]
    assert notes and "bubblewrap" in notes[0]["detail"]
    assert r.trace.of_type("sandbox") == []  # no code was asked for or run
    llm.done()


def test_python_only_is_an_explicit_opt_in():
    cfg = MISSING.model_copy(update={"isolation": "python-only"})
    st = SB.sandbox_status(cfg)
    assert st.ok and st.mode == "python-only" and "explicitly configured" in st.detail
    res = SB.run_code("result = {0: {'n': int(masks[0].sum())}}", make_scene(), cfg)
    assert res.attributes == {0: {"n": 36}} and res.isolation == "python-only"
    with pytest.raises(SB.SandboxRefused):  # the Python layers still refuse
        SB.run_code("import os", make_scene(), cfg)


def test_isolation_off_never_runs_code():
    cfg = LIMITS.model_copy(update={"isolation": "off"})
    with pytest.raises(SB.SandboxUnavailable, match="isolation = off"):
        SB.run_code("result = {}", make_scene(), cfg)


def test_doctor_says_why_spatial_code_is_off(tiny_models_dir, tmp_path, monkeypatch):
    from cli.main import app

    monkeypatch.setenv("CIELR_MODELS_DIR", str(tiny_models_dir))
    monkeypatch.setenv("CIELR_STORE__URL", str(tmp_path / "store"))
    monkeypatch.setenv("CIELR_REASONING__SANDBOX__BWRAP_PATH", "/nonexistent/bwrap")
    out = CliRunner().invoke(app, ["doctor", "--profile", "tiny"]).output
    assert "[--] sandbox: spatial code is off" in out and "apt-get install bubblewrap" in out

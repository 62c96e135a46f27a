from __future__ import annotations

import pytest
import yaml
from typer.testing import CliRunner

from cielr_core.config import ConfigError, load_settings, settings_from_dict, settings_to_dict


def test_defaults_are_paper_faithful():
    s = load_settings(profile="default")
    assert s.perception.sam2.model.id == "facebook/sam2.1-hiera-large"
    assert (s.perception.sam2.points_per_side, s.perception.sam2.pred_iou_thresh) == (16, 0.7)
    assert (s.perception.sam2.stability_score_thresh, s.perception.sam2.crop_n_layers) == (0.92, 1)
    assert s.perception.owlv2.model.id == "google/owlv2-base-patch16-ensemble"
    assert s.perception.depth.model.id == "depth-anything/Depth-Anything-V2-Small-hf"
    assert s.llm.model.id == "Qwen/Qwen2.5-7B-Instruct"
    assert s.reasoning.max_iterations == 3
    assert s.store.url == "./cielr-data"


def test_precedence_defaults_profile_yaml_env_overrides(tmp_path, monkeypatch):
    f = tmp_path / "c.yaml"
    f.write_text(yaml.safe_dump({"perception": {"sam2": {"points_per_side": 7, "pred_iou_thresh": 0.5}},
                                 "reasoning": {"max_iterations": 5}, "editing": {"steps": 11}}))
    base = load_settings(profile="tiny")
    assert base.perception.sam2.points_per_side == 4  # profile beats default
    s = load_settings(profile="tiny", config_file=f)
    assert s.perception.sam2.points_per_side == 7  # yaml beats profile
    assert s.perception.sam2.pred_iou_thresh == 0.5
    monkeypatch.setenv("CIELR_PERCEPTION__SAM2__POINTS_PER_SIDE", "9")
    monkeypatch.setenv("CIELR_REASONING__MAX_ITERATIONS", "6")
    s = load_settings(profile="tiny", config_file=f)
    assert s.perception.sam2.points_per_side == 9  # env beats yaml
    assert s.reasoning.max_iterations == 6
    assert s.editing.steps == 11  # untouched yaml value survives
    s = load_settings(profile="tiny", config_file=f, overrides={"reasoning": {"max_iterations": 1}})
    assert s.reasoning.max_iterations == 1  # explicit beats env
    assert s.perception.sam2.points_per_side == 9


def test_profile_from_env_and_unknown_profile(monkeypatch):
    monkeypatch.setenv("CIELR_PROFILE", "tiny")
    assert load_settings().profile == "tiny"
    with pytest.raises(ConfigError, match="unknown profile"):
        load_settings(profile="huge")


def test_bad_yaml_and_unknown_keys(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("perception: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_settings(config_file=f)
    f.write_text(yaml.safe_dump({"perception": {"no_such_field": 1}}))
    with pytest.raises(ValueError, match="no_such_field"):
        load_settings(config_file=f)
    with pytest.raises(ConfigError, match="cannot read"):
        load_settings(config_file=tmp_path / "missing.yaml")


def test_secrets_masked_everywhere(monkeypatch):
    monkeypatch.setenv("CIELR_LLM__API_KEY", "sk-very-secret")
    monkeypatch.setenv("CIELR_STORE__SECRET", "s3-very-secret")
    s = load_settings()
    assert s.llm.api_key.get_secret_value() == "sk-very-secret"
    text = s.to_yaml() + repr(s) + str(s) + str(settings_to_dict(s))
    assert "very-secret" not in text
    # secrets do not enter digests either, and reloading in another process takes them from env
    assert s.llm.digest() == load_settings(overrides={"llm": {"api_key": "other"}}).llm.digest()
    again = settings_from_dict(settings_to_dict(s))
    assert again.llm.api_key.get_secret_value() == "sk-very-secret"
    assert again.perception.digest() == s.perception.digest()


def test_digests_stable_and_stage_local():
    a, b = load_settings(), load_settings()
    assert a.stage_digests() == b.stage_digests()
    c = load_settings(overrides={"llm": {"model": {"id": "some/other-llm"}}})
    assert c.llm.digest() != a.llm.digest()
    assert c.perception.digest() == a.perception.digest()  # LLM change does not touch perception
    d = load_settings(overrides={"perception": {"device": "cuda", "batch_size": 64}})
    assert d.perception.digest() == a.perception.digest()  # device/batch size do not change results
    e = load_settings(overrides={"perception": {"sam2": {"pred_iou_thresh": 0.8}}})
    assert e.perception.digest() != a.perception.digest()
    assert a.perception.digest("code-v1") != a.perception.digest("code-v2")


def test_resolve_model_paths(tmp_path):
    s = load_settings(profile="tiny", overrides={"models_dir": str(tmp_path)})
    assert s.resolve_model(s.perception.owlv2.model) == f"{tmp_path}/owlv2"
    d = load_settings(profile="default")
    assert d.resolve_model(d.perception.owlv2.model) == "google/owlv2-base-patch16-ensemble"


def test_cli_config_show(monkeypatch):
    from cli.main import app

    monkeypatch.setenv("CIELR_LLM__API_KEY", "sk-cli-secret")
    r = CliRunner().invoke(app, ["config", "show", "--profile", "tiny", "--digests"])
    assert r.exit_code == 0, r.output
    assert "sk-cli-secret" not in r.output
    data = yaml.safe_load(r.output)
    assert data["profile"] == "tiny" and data["llm"]["api_key"] == "**********"
    assert set(data["digests"]) >= {"perception", "llm", "reasoning", "editing"}
    r = CliRunner().invoke(app, ["config", "show", "--profile", "nope"])
    assert r.exit_code == 2 and "unknown profile" in r.output


def test_settings_dict_values_beat_the_receiving_environment(monkeypatch):
    s = load_settings(overrides={"store": {"url": "/flow/chose/this"}})
    d = settings_to_dict(s)
    monkeypatch.setenv("CIELR_STORE__URL", "/worker/env/value")
    monkeypatch.setenv("CIELR_STORE__SECRET", "from-worker-env")
    again = settings_from_dict(d)
    assert again.store.url == "/flow/chose/this"
    assert again.store.secret.get_secret_value() == "from-worker-env"


def test_config_data_sits_where_the_yaml_file_does(monkeypatch):
    s = load_settings(profile="tiny", config_data={"editing": {"steps": 5}, "reasoning": {"max_iterations": 2}})
    assert s.editing.steps == 5 and s.reasoning.max_iterations == 2
    monkeypatch.setenv("CIELR_EDITING__STEPS", "9")
    assert load_settings(profile="tiny", config_data={"editing": {"steps": 5}}).editing.steps == 9


def test_a_path_alone_in_the_environment_keeps_the_model_id(monkeypatch):
    """The missing-model message says `CIELR_<...>__MODEL__PATH=/path`: that variable alone must work
    (the nested setting is merged into the section's defaults, not replacing the model reference)."""
    from cielr_core.models import PATH_SETTING

    for kind, var in PATH_SETTING.items():
        monkeypatch.setenv(var, f"/models/{kind}")
    s = load_settings(profile="default")
    refs = {"sam2": s.perception.sam2.model, "owlv2": s.perception.owlv2.model, "depth": s.perception.depth.model,
            "llm": s.llm.model, "inpaint": s.editing.model, "lama": s.editing.lama.model,
            "instruct": s.editing.instruct.model, "clip": s.eval.clip, "dino": s.eval.dino}
    assert set(refs) == set(PATH_SETTING)
    for kind, ref in refs.items():
        assert ref.path == f"/models/{kind}" and ref.id, kind
        assert s.resolve_model(ref) == f"/models/{kind}"
    assert s.perception.sam2.model.id == "facebook/sam2.1-hiera-large"

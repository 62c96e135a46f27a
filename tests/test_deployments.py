"""Deployments: job templates, prefect.yaml, `cielr deploy` against a real Prefect server with a real
process worker, and the Dask task runner.

Docker and Kubernetes do not run here, so their templates are checked the way a worker would use
them: the variables schema is a valid JSON schema, its defaults validate, and Prefect's own
templating renders a job configuration with the GPU, shared-memory and model-cache settings.
"""

from __future__ import annotations

import io
import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import jsonschema
import pyarrow.parquet as pq
import pytest
import yaml

from cli.commands.demo import write_demo_inputs
from deployments.helper import (
    POOL_TYPES,
    PREFECT_FILE,
    DeployOptions,
    load_template,
    render_job_configuration,
    variable_defaults,
)
from storage import ArtifactStore

REPO = Path(__file__).resolve().parents[1]


def _placeholders(obj) -> list[str]:
    text = json.dumps(obj)
    return re.findall(r"{{[^}]*}}", text)


@pytest.mark.parametrize("pool_type", POOL_TYPES)
def test_job_template_schema_and_defaults(pool_type):
    template = load_template(pool_type)
    schema = template["variables"]
    jsonschema.Draft202012Validator.check_schema(schema)
    jsonschema.validate(variable_defaults(template), schema)
    # every placeholder in the job configuration names a declared variable
    text = json.dumps(template["job_configuration"])
    import re

    names = set(re.findall(r"{{\s*([\w]+)\s*}}", text))
    assert names <= set(schema["properties"]), names - set(schema["properties"])
    rendered = render_job_configuration(pool_type)
    assert not _placeholders(rendered), rendered


def test_process_template_passes_cuda_visible_devices():
    cfg = render_job_configuration("process")
    assert cfg["env"]["CUDA_VISIBLE_DEVICES"] == "0"
    cfg = render_job_configuration("process", {"env": {"CUDA_VISIBLE_DEVICES": "3", "CIELR_ORCHESTRATION__GPU_TAG": "gpu:box-3"}})
    assert cfg["env"] == {"CUDA_VISIBLE_DEVICES": "3", "CIELR_ORCHESTRATION__GPU_TAG": "gpu:box-3"}


def test_docker_template_requests_gpus_and_shared_memory():
    cfg = render_job_configuration("docker", {"gpu_device_ids": ["1"], "shm_size": "16g"})
    kwargs = cfg["container_create_kwargs"]
    assert kwargs["device_requests"] == [{"driver": "nvidia", "device_ids": ["1"], "capabilities": [["gpu"]]}]
    assert kwargs["shm_size"] == "16g"
    assert "cielr-model-cache:/models" in cfg["volumes"]
    assert cfg["image"] == "cielr-worker:latest"
    assert cfg["env"]["HF_HOME"] == "/models/hf"


def test_kubernetes_template_limits_gpus_and_mounts_the_model_cache():
    cfg = render_job_configuration("kubernetes", {"gpu_count": 2, "model_cache_pvc": "models-pvc"})
    job = cfg["job_manifest"]
    assert job["apiVersion"] == "batch/v1" and job["kind"] == "Job"
    pod = job["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 2
    assert {"name": "model-cache", "mountPath": "/models"} in container["volumeMounts"]
    claim = [v for v in pod["volumes"] if v["name"] == "model-cache"][0]
    assert claim["persistentVolumeClaim"]["claimName"] == "models-pvc"
    assert pod["restartPolicy"] == "Never"
    # a valid Kubernetes object name prefix
    assert job["metadata"]["generateName"] == "cielr-"


def test_prefect_yaml_resolves_to_a_nightly_cron_deployment(monkeypatch):
    from prefect.client.schemas.schedules import CronSchedule
    from prefect.utilities.templating import apply_values

    from deployments.steps import DEFAULT_POOL, STEP_ID, check_environment

    assert PREFECT_FILE == REPO / "prefect.yaml"  # at the root: `prefect deploy --all` from there
    config = yaml.safe_load(PREFECT_FILE.read_text())
    opts = DeployOptions(pool="p1", manifest="s3://b/m.parquet", store="s3://b/store", profile="default")
    for k, v in opts.deploy_env().items():  # `prefect deploy` reads {{ $NAME }} from the environment
        monkeypatch.setenv(k, v)
    # as `prefect deploy` does: environment placeholders first, then the build step's outputs
    [build_step] = config["build"]
    assert build_step["deployments.steps.check_environment"]["id"] == STEP_ID
    resolved = apply_values(apply_values(config, {}, remove_notset=False), {STEP_ID: check_environment()},
                            remove_notset=False)
    assert not _placeholders(resolved)
    # the pull step names no path of the deploying machine
    assert resolved["pull"] == [{"deployments.steps.set_project_directory": {}}]
    nightly = {d["name"]: d for d in resolved["deployments"]}["nightly"]
    assert nightly["entrypoint"] == "flows/edit_dataset.py:edit_dataset"
    assert nightly["enforce_parameter_schema"] is True
    assert nightly["parameters"] == {"manifest_uri": "s3://b/m.parquet", "store": "s3://b/store", "profile": "default"}
    sched = nightly["schedules"][0]
    assert CronSchedule(cron=sched["cron"], timezone=sched["timezone"]).cron == "0 2 * * *"
    # a plain pool name, not a {{ $VARIABLE }}: Prefect looks it up before any build step runs
    assert nightly["work_pool"]["name"] == DEFAULT_POOL == "cielr-gpu"
    assert nightly["work_pool"]["job_variables"]["env"]["CIELR_ORCHESTRATION__GPU_TAG"] == "gpu:p1"
    entry = REPO / nightly["entrypoint"].split(":")[0]
    assert entry.exists()


def test_a_missing_variable_is_named_and_the_optional_ones_have_defaults(monkeypatch):
    from typer.testing import CliRunner

    from cli.main import app
    from deployments.steps import check_environment, deploy_values

    for k in list(os.environ):
        if k.startswith("CIELR_"):
            monkeypatch.delenv(k)
    monkeypatch.setenv("CIELR_MANIFEST", "s3://b/m.parquet")
    with pytest.raises(ValueError) as e:  # the build step that `prefect deploy --all` runs first
        check_environment()
    assert "CIELR_STORE" in str(e.value) and "CIELR_MANIFEST" not in str(e.value).split("\n")[0]
    assert "{{" not in str(e.value)
    checked = CliRunner().invoke(app, ["deploy", "--check"])
    assert checked.exit_code == 2, checked.output
    assert "CIELR_STORE = MISSING" in checked.output and "CIELR_CRON = not set, default '0 2 * * *'" in checked.output
    monkeypatch.setenv("CIELR_STORE", "  ")  # empty counts as missing
    with pytest.raises(ValueError, match="CIELR_STORE"):
        deploy_values()
    monkeypatch.setenv("CIELR_STORE", "s3://b/store")
    assert deploy_values() == {"manifest": "s3://b/m.parquet", "store": "s3://b/store",
                               "profile": "default", "cron": "0 2 * * *", "timezone": "UTC",
                               "gpu_tag": "gpu:cielr-gpu", "cuda_visible_devices": "0"}
    checked = CliRunner().invoke(app, ["deploy", "--check"])
    assert checked.exit_code == 0, checked.output
    assert "work pool cielr-gpu" in checked.output
    # CIELR_POOL is not read by prefect.yaml: set, it stops the deploy naming itself and the way out,
    # instead of the deployments silently landing on cielr-gpu
    monkeypatch.setenv("CIELR_POOL", "box-1")
    with pytest.raises(ValueError) as e:
        check_environment()
    assert str(e.value).startswith("CIELR_POOL is set ('box-1')") and "--pool box-1" in str(e.value)
    checked = CliRunner().invoke(app, ["deploy", "--check"])
    assert checked.exit_code == 2 and "CIELR_POOL is set" in checked.output, checked.output


def test_the_pull_step_finds_the_project_without_a_stored_path(monkeypatch, tmp_path):
    from deployments.steps import set_project_directory

    monkeypatch.delenv("CIELR_PROJECT_DIR", raising=False)
    monkeypatch.chdir(tmp_path)
    assert set_project_directory() == {"directory": str(REPO)} and Path.cwd() == REPO
    monkeypatch.setenv("CIELR_PROJECT_DIR", str(tmp_path))  # the worker's own setting wins, and is checked
    with pytest.raises(FileNotFoundError, match="CIELR_PROJECT_DIR"):
        set_project_directory()


@pytest.mark.parametrize("entrypoint", ["flows.edit_dataset:edit_dataset", "flows.evaluate:evaluate",
                                        "flows.edit_image:edit_image"])
def test_every_flow_parameter_has_a_description_for_the_run_form(entrypoint):
    """Prefect parses the flow docstring's Google-style Args into the parameter schema (the UI's run form)."""
    import importlib

    from prefect.utilities.callables import parameter_schema

    module, name = entrypoint.split(":")
    props = parameter_schema(getattr(importlib.import_module(module), name)).model_dump()["properties"]
    undescribed = [name for name, p in props.items() if len(p.get("description") or "") < 15]
    assert props and not undescribed, undescribed


# --- a real server, `cielr deploy`, a real worker -----------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture()
def prefect_server(tmp_path):
    port = _free_port()
    home = tmp_path / "prefect-home"
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "PREFECT_API_URL": f"http://127.0.0.1:{port}/api", "PREFECT_UI_ENABLED": "false"}
    env.pop("PREFECT_API_KEY", None)
    log = open(tmp_path / "server.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
                             "--port", str(port)], env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    api = f"http://127.0.0.1:{port}/api"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{api}/health", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            break
        time.sleep(0.5)
    else:
        proc.kill()
        pytest.fail(f"prefect server did not start: {(tmp_path / 'server.log').read_text()[-2000:]}")
    if proc.poll() is not None:
        pytest.fail(f"prefect server exited: {(tmp_path / 'server.log').read_text()[-2000:]}")
    yield api, env
    os.killpg(proc.pid, 15)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)
    log.close()


@pytest.mark.slow
def test_deploy_and_a_real_worker_run_the_nightly_deployment(prefect_server, tiny_models_dir, ciebench_dir, tmp_path):
    api, env = prefect_server
    env = {**env, "CIELR_MODELS_DIR": str(tiny_models_dir)}
    _, _ = write_demo_inputs(tmp_path / "data", str(ciebench_dir), 2)
    manifest = tmp_path / "data" / "manifest.parquet"
    store = tmp_path / "store"
    deploy = subprocess.run(
        [sys.executable, "-m", "cli.main", "deploy", "--pool-type", "process", "--pool", "test-gpu-pool",
         "--manifest", str(manifest), "--store", str(store), "--profile", "tiny", "--name", "nightly",
         "--cron", "30 1 * * *"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert deploy.returncode == 0, deploy.stderr[-3000:] + deploy.stdout[-2000:]
    assert deploy.stdout.strip().splitlines()[-1] == "edit-dataset/nightly"

    client = httpx.Client(base_url=api, timeout=30)
    # Prefect's own `prefect deploy --all` from the root, as a Prefect user runs it, with nothing set
    # and no cielr-gpu pool: Prefect names the pool prefect.yaml uses (no unresolved placeholder)
    raw = subprocess.run([sys.executable, "-m", "prefect", "--no-prompt", "deploy", "--all"], cwd=REPO,
                         env=env, capture_output=True, text=True, timeout=300)
    out = " ".join((raw.stdout + raw.stderr).split())
    assert raw.returncode != 0 and "work pool 'cielr-gpu' which does not exist" in out, out[-3000:]
    assert "{{" not in out
    # one deployment on another pool, without CIELR_STORE: the build step names the variable and
    # nothing is registered
    raw = subprocess.run([sys.executable, "-m", "prefect", "--no-prompt", "deploy", "--name", "evaluate",
                          "--pool", "test-gpu-pool"], cwd=REPO, env={**env, "CIELR_MANIFEST": str(manifest)},
                         capture_output=True, text=True, timeout=300)
    assert raw.returncode != 0 and "CIELR_STORE: artifact store URL" in raw.stdout + raw.stderr, raw.stdout[-3000:]
    assert client.get("/deployments/name/evaluate/evaluate").status_code == 404
    pool = client.get("/work_pools/test-gpu-pool").json()
    assert pool["type"] == "process"
    assert pool["base_job_template"]["variables"]["properties"]["env"]["default"]["CUDA_VISIBLE_DEVICES"] == "0"
    # the GPU limit is a global concurrency limit that each chunk holds a slot of, not a tag limit
    limit = client.get("/v2/concurrency_limits/gpu:test-gpu-pool").json()
    assert limit["limit"] == 1 and limit["active"] is True, limit
    assert client.get("/concurrency_limits/tag/gpu:test-gpu-pool").status_code == 404
    dep = client.get("/deployments/name/edit-dataset/nightly").json()
    assert dep["enforce_parameter_schema"] is True
    assert dep["pull_steps"] == [{"deployments.steps.set_project_directory": {}}]  # no path of this machine
    assert "Parquet" in dep["parameter_openapi_schema"]["properties"]["manifest_uri"]["description"]
    assert [s["schedule"]["cron"] for s in dep["schedules"]] == ["30 1 * * *"]
    assert dep["parameters"]["profile"] == "tiny"
    # enforce_parameter_schema: a bad profile is refused by the server
    bad = client.post(f"/deployments/{dep['id']}/create_flow_run", json={"parameters": {"profile": "huge"}})
    assert bad.status_code in (409, 422), bad.text

    run = client.post(f"/deployments/{dep['id']}/create_flow_run", json={}).json()
    worker = subprocess.run(
        [sys.executable, "-m", "prefect", "worker", "start", "--pool", "test-gpu-pool", "--run-once",
         "--type", "process"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    state = client.get(f"/flow_runs/{run['id']}").json()["state"]
    assert state["type"] == "COMPLETED", (state, worker.stdout[-4000:], worker.stderr[-4000:])
    results = sorted(store.glob("runs/*/results.parquet"))
    assert len(results) == 1
    rows = pq.read_table(results[0]).to_pylist()
    assert len(rows) == 2 and all(r["status"] in ("ok", "no_target") for r in rows), [r["error"] for r in rows]
    # GPU stages ran, untagged (no slot per task run); the chunk took the per-worker GPU slot and
    # gave it back
    task_runs = client.post("/task_runs/filter", json={"task_runs": {"flow_run_id": {"any_": [
        f["id"] for f in client.post("/flow_runs/filter", json={}).json()]}}}).json()
    assert {t["name"].split("-")[0].split("[")[0] for t in task_runs} >= {"segment", "detect", "depth"}
    assert all(not t["tags"] or "gpu:test-gpu-pool" not in t["tags"] for t in task_runs), task_runs
    assert client.get("/v2/concurrency_limits/gpu:test-gpu-pool").json()["active_slots"] == 0
    held = []
    for _ in range(60):  # the server persists events in batches
        events = client.post("/events/filter", json={"filter": {"event": {"name": [
            "prefect.concurrency-limit.acquired"]}, "any_resource": {"id_prefix": ["prefect.concurrency-limit."]}},
            "limit": 50}).json().get("events", [])
        held = [e for e in events if e["resource"].get("prefect.resource.name") == "gpu:test-gpu-pool"]
        if held:
            break
        time.sleep(1)
    assert held, "no chunk acquired the GPU slot"
    assert {r.get("prefect.resource.name") for e in held for r in e["related"]} & {"edit-dataset-chunk"}, held


@pytest.mark.slow
def test_dask_runner_gives_the_same_rows_as_the_default_runner(prefect_harness, tiny_models_dir, ciebench_dir,
                                                               tmp_path):
    from flows.edit_dataset import edit_dataset

    write_demo_inputs(tmp_path / "data", str(ciebench_dir), 2)
    manifest = str(tmp_path / "data" / "manifest.parquet")
    cfg = {"models_dir": str(tiny_models_dir), "orchestration": {"dask_workers": 2}}
    rows = {}
    for runner in ("default", "dask"):
        store = tmp_path / f"store-{runner}"
        uri = edit_dataset(manifest_uri=manifest, store=str(store), profile="tiny", config=cfg, runner=runner)
        st = ArtifactStore(str(store))
        rows[runner] = pq.read_table(io.BytesIO(st.get_bytes(st.key_for(uri)))).to_pylist()
        for r in rows[runner]:
            r["edited_png"] = st.get_bytes(st.key_for(r["edited_uri"])) if r["edited_uri"] else None
            r["edited_key"] = st.key_for(r["edited_uri"]) if r["edited_uri"] else None
    keep = ("image_id", "status", "error", "image_sha256", "n_steps", "n_edited_steps", "edited_key", "edited_png")
    default = [{k: r[k] for k in keep} for r in rows["default"]]
    dask = [{k: r[k] for k in keep} for r in rows["dask"]]
    assert [r["status"] for r in default] and all(r["status"] != "failed" for r in default), default
    assert dask == default

"""The tasks layer on its own (no flow run, no models): retry classification, cache-key derivation,
key lengths, the settings reference, the typed references through Prefect's JSON serializer, and
reading a task run's final state."""

from __future__ import annotations

import pytest

from cielr_core.config import load_settings
from cielr_core.plan import EditStep
from tasks import keys, runtime
from tasks.editing import inpaint_cache_key
from tasks.images import load_cache_key
from tasks.options import failure_of, is_transient, outcome
from tasks.output import finalize_cache_key
from tasks.perception import depth_cache_key, detect_cache_key, merge_cache_key, segment_cache_key
from tasks.reasoning import decompose_cache_key, reason_step_cache_key
from tasks.refs import (
    EditRef,
    ImageRef,
    ResultRow,
    SegmentRef,
    SSRRef,
    StageCount,
    StepRef,
    result_schema,
    results_table,
)

SHA = "a" * 64
SSR_DIGEST = "b" * 64


@pytest.fixture()
def settings(tmp_path):
    return load_settings(profile="tiny", overrides={"store": {"url": str(tmp_path / "store")}})


# -- retry classification ----------------------------------------------------------------------------
def test_transient_errors_are_retried_and_bad_input_is_not():
    import torch
    from pydantic import BaseModel, ValidationError

    from cielr_core.editing import EditingError
    from cielr_core.images import BadImageError
    from cielr_core.manifest import ManifestError
    from cielr_core.models import ModelUnavailableError
    from cielr_core.reasoning import InvalidAnswerError, LLMError
    from storage import ArtifactNotFound, KeyError_, StoreError

    class M(BaseModel):
        x: int

    try:
        M(x="not a number")
    except ValidationError as e:
        validation_error = e

    transient = [
        StoreError("outage", transient=True), LLMError("429", transient=True), ConnectionError("reset"),
        TimeoutError("slow"), OSError("network is unreachable"), torch.OutOfMemoryError("CUDA out of memory."),
        RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"),
    ]
    permanent = [
        None, StoreError("denied"), ArtifactNotFound("gone"), LLMError("400"), BadImageError("corrupt"),
        EditingError("bad step"), InvalidAnswerError("reason", "bad", 3), ModelUnavailableError("no weights"),
        ManifestError("no column"), KeyError_("../x"), validation_error, ValueError("bad"), TypeError("bug"),
        FileNotFoundError("x.png"), PermissionError("x.png"), IsADirectoryError("x"), RuntimeError("a bug"),
    ]
    assert [e for e in transient if not is_transient(e)] == []
    assert [e for e in permanent if is_transient(e)] == []


def test_retry_classification_goes_by_type_and_attribute_not_by_class_name():
    class ValueError(OSError):  # noqa: A001 - a name the old string rules took for bad input
        pass

    class KeyError_(ConnectionError):
        pass

    class Flaky(Exception):
        transient = True

    class Final(OSError):
        transient = False

    assert is_transient(ValueError("disk hiccup")) and is_transient(KeyError_("reset"))
    assert is_transient(Flaky()) and not is_transient(Final())


# -- final states ------------------------------------------------------------------------------------
def test_outcome_reads_every_final_state_one_way():
    from prefect.states import Cancelled, Completed, Crashed, Failed

    assert outcome(Completed(data=3)) == 3 and failure_of(Completed(data=3)) is None
    err = ValueError("bad input")
    with pytest.raises(ValueError, match="bad input"):
        outcome(Failed(data=err))
    assert failure_of(Failed(data=err)) is err
    for state in (Crashed(message="worker died"), Cancelled(message="stopped")):
        e = failure_of(state)
        assert isinstance(e, BaseException) and ("worker died" in str(e) or "stopped" in str(e)), e


# -- cache keys --------------------------------------------------------------------------------------
def _params(settings, **over):
    ref = runtime.settings_ref(settings)
    image = ImageRef(sha=SHA, key=keys.image_key(SHA), width=8, height=6)
    ssr = SSRRef(prefix=keys.ssr_prefix(SHA, settings), digest=SSR_DIGEST, n_objects=1)
    step = StepRef(step=EditStep(subtask="remove the cup", operation="remove", target_ids=[0], ssr_digest=SSR_DIGEST),
                   ssr=ssr, trace_key="t")
    p = {"settings": ref, "image": image, "ssr": ssr, "step": step, "seed": 0, "instruction": "remove the cup",
         "subtask": "remove the cup", "sam2_overrides": None, "extra_queries": None}
    p.update(over)
    return p


CACHE_KEYS = {
    "segment": segment_cache_key, "detect": detect_cache_key, "depth": depth_cache_key, "merge": merge_cache_key,
    "decompose": decompose_cache_key, "reason": reason_step_cache_key, "inpaint": inpaint_cache_key,
    "finalize": finalize_cache_key,
}


def test_cache_keys_derive_from_the_artifact_prefixes(settings):
    p = _params(settings)
    s = settings
    step_digest = keys.step_digest(p["step"].step.model_dump(mode="json"), SSR_DIGEST)
    reason = keys.reason_prefix(SSR_DIGEST, p["instruction"], s)
    expected = {
        "segment": keys.segment_prefix(SHA, s, None), "detect": keys.detect_prefix(SHA, s, None),
        "depth": keys.depth_prefix(SHA, s), "merge": keys.ssr_prefix(SHA, s), "decompose": reason,
        "reason": keys.step_prefix(reason, p["subtask"]), "inpaint": keys.edit_prefix(SHA, step_digest, s, 0),
        "finalize": keys.output_prefix(SHA, p["instruction"], s, 0),
    }
    for stage, fn in CACHE_KEYS.items():
        assert fn(p) == keys.cache_key(expected[stage]), stage
    assert len({fn(p) for fn in CACHE_KEYS.values()}) == len(CACHE_KEYS), "two stages share a cache key"


def test_only_an_llm_change_leaves_perception_keys_alone(settings):
    before = {stage: fn(_params(settings)) for stage, fn in CACHE_KEYS.items()}
    llm = settings.model_copy(deep=True)
    llm.llm.max_new_tokens += 1
    after = {stage: fn(_params(llm)) for stage, fn in CACHE_KEYS.items()}
    same = {stage for stage in CACHE_KEYS if before[stage] == after[stage]}
    assert same == {"segment", "detect", "depth", "merge", "inpaint"}
    seed = {stage: fn(_params(settings, seed=1)) for stage, fn in CACHE_KEYS.items()}
    assert {stage for stage in CACHE_KEYS if seed[stage] != before[stage]} == {"inpaint", "finalize"}
    sam = settings.model_copy(deep=True)
    sam.perception.sam2.pred_iou_thresh = 0.5
    changed = {stage for stage, fn in CACHE_KEYS.items() if fn(_params(sam)) != before[stage]}
    assert {"segment", "merge", "decompose", "reason", "finalize"} <= changed and "detect" not in changed


def test_cache_keys_are_short_file_names(settings, tmp_path):
    image = tmp_path / "x.png"
    image.write_bytes(b"not read here")
    long = "remove " + "the very long instruction " * 40
    p = _params(settings, instruction=long, subtask=long, image_uri=str(image))
    found = [fn(p) for fn in CACHE_KEYS.values()] + [load_cache_key(p)]
    found.append(load_cache_key({**p, "image_uri": str(tmp_path / "missing.png")}))
    for key in found:
        assert 0 < len(key) <= keys.MAX_CACHE_KEY and "/" not in key and key.isprintable(), key
    assert keys.short_key("segment-abc") == "segment-abc"
    hashed = keys.short_key("segment-" + "x" * 200)
    assert hashed.startswith("segment-") and len(hashed) == len("segment-") + 64
    assert hashed == keys.short_key("segment-" + "x" * 200) != keys.short_key("segment-" + "x" * 201)


# -- the settings reference --------------------------------------------------------------------------
def test_settings_ref_is_computed_once_and_resolved_by_digest(settings, monkeypatch):
    import json

    ref = runtime.settings_ref(settings)
    assert ref == runtime.settings_ref(settings) and len(ref.digest) == 64
    assert "api_key" not in ref.data or json.loads(ref.data)["llm"]["api_key"] is None
    runtime.reset()
    parsed = []
    real = runtime.settings_from_dict
    monkeypatch.setattr(runtime, "settings_from_dict", lambda d: parsed.append(1) or real(d))
    first = runtime.settings(ref)
    assert runtime.settings(ref) is first and runtime.settings(ref.model_copy()) is first
    assert len(parsed) == 1, "the settings JSON is parsed once per process"
    assert first.model_dump() == settings.model_dump()
    with pytest.raises(Exception):
        ref.digest = "x"  # frozen


def test_every_task_pins_torch_intra_op_threads_from_the_settings(settings):
    """A Dask worker starts torch with one intra-op thread, the in-process runner with every core; CPU
    kernels split their sums by that count, so each task pins orchestration.torch_threads (through
    runtime.settings, where every task starts) and an image gives the same bytes wherever it ran."""
    import torch

    before = torch.get_num_threads()
    try:
        ref = runtime.settings_ref(settings)
        assert settings.orchestration.torch_threads == 1
        torch.set_num_threads(3)
        runtime.settings(ref)
        assert torch.get_num_threads() == 1
        more = settings.model_copy(deep=True)
        more.orchestration.torch_threads = 2
        runtime.settings(runtime.settings_ref(more))
        assert torch.get_num_threads() == 2
        runtime.settings(more)  # a Settings object passed as it is pins too
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


# -- references through Prefect's JSON serializer ----------------------------------------------------
def test_refs_round_trip_through_prefects_json_serializer(settings):
    from prefect.serializers import JSONSerializer

    p = _params(settings)
    edit = EditRef(image=p["image"], mask_key="edit/x/mask.png", skipped=False, backend="opencv")
    values = [p["image"], p["ssr"], p["step"], edit, SegmentRef(key="seg/x/masks.npz", n_masks=3),
              [edit, None], p["settings"]]
    ser = JSONSerializer()
    for v in values:
        back = ser.loads(ser.dumps(v))
        assert back == v and type(back) is type(v), (v, back)


def test_results_schema_derives_from_the_result_row():
    import pyarrow as pa

    schema = result_schema()
    assert schema.names == list(ResultRow.model_fields)
    assert schema.field("cached_stages").type == pa.map_(pa.string(), pa.struct([("hits", pa.int64()),
                                                                                 ("calls", pa.int64())]))
    row = ResultRow(image_id="a", image_uri="/x.png", instruction="i", status="ok", seed=0, cache_hits=1, task_runs=2,
                    cached_stages={"load": StageCount(hits=1, calls=1), "segment": StageCount(hits=0, calls=1)})
    table = results_table([row, ResultRow(image_id="b", image_uri="/y.png", instruction="i", status="invalid")])
    assert table.schema == schema
    back = table.to_pylist()
    assert dict(back[0]["cached_stages"]) == {"load": {"hits": 1, "calls": 1}, "segment": {"hits": 0, "calls": 1}}
    assert back[1]["cached_stages"] is None and back[1]["status"] == "invalid"

"""The LLM batched (issue 15): concurrent calls on the in-process model decode as one batch with
the answers of batch-1 greedy decoding; the OpenAI-compatible backend keeps several requests in
flight, bounded by llm.max_concurrency."""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path
from typing import Literal

import pytest
from conftest import tiny_family
from pydantic import BaseModel, Field

from cielr_core.config import load_settings
from cielr_core.reasoning import AnswerParseError, make_llm

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from llm_endpoint import LLMEndpoint


class Pick(BaseModel):
    status: str = Field(pattern="^(ok|no_target)$")
    ids: list[int] = Field(max_length=3)
    word: str = Field(max_length=12)
    n: int = Field(ge=0, le=99)


class Small(BaseModel):
    label: str = Field(max_length=20)
    n: int = Field(ge=0, le=9)


class Op(BaseModel):
    op: Literal["remove", "replace", "recolor"]
    target: int = Field(ge=0, le=5)
    prompt: str = Field(max_length=30)


def _llm(models_dir: Path, **llm):
    s = load_settings(profile="tiny", overrides={"models_dir": str(models_dir), "llm": {"max_new_tokens": 400, **llm}})
    return make_llm(s.llm, s)


def _outcome(llm, msgs, schema):
    try:
        c = llm.complete(msgs, schema)
    except AnswerParseError as e:
        return ("cut off", e.raw, e.tokens)
    return ("ok", c.raw, c.tokens, c.parsed)


@pytest.fixture()
def one_torch_thread():
    """The stage tasks' own setting (orchestration.torch_threads 1), restored afterwards."""
    import torch

    from cielr_core.models import pin_intra_op_threads

    n = torch.get_num_threads()
    pin_intra_op_threads(1)
    yield
    pin_intra_op_threads(n)


def test_concurrent_calls_decode_as_one_batch_with_batch1_answers(session_tmp, one_torch_thread):
    from cielr_core.reasoning.transformers_backend import observed_batch_sizes

    tiny_family(session_tmp, "qwen2")
    d = session_tmp / "models"
    # prompts of different lengths (left padding), three schemas (one grammar matcher per row), and
    # one row whose token budget ends before its JSON does (per-row stop, reported as cut off)
    calls = [([{"role": "system", "content": "Answer in JSON."},
               {"role": "user", "content": f"pick {i} " + "the apple near the cup " * (2 * i)}],
              (Pick, Small, Op)[i % 3], 400 if i != 3 else 12) for i in range(5)]
    alone = [_outcome(_llm(d, max_batch_size=1, max_new_tokens=n), m, sc) for m, sc, n in calls]
    assert {o[0] for o in alone} == {"ok", "cut off"}

    before = observed_batch_sizes().get(len(calls), 0)
    # the batch fills before the (long) wait ends: all five calls are decoded together
    batched = [_llm(d, max_batch_size=len(calls), batch_wait_ms=30_000, max_new_tokens=n) for _, _, n in calls]
    got: list = [None] * len(calls)

    def run(i):
        got[i] = _outcome(batched[i], calls[i][0], calls[i][1])

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert observed_batch_sizes().get(len(calls), 0) > before  # decode steps that carried all five rows
    assert got == alone

    # continuous batching: calls that arrive while a batch decodes join it between steps (their KV
    # cache left-padded to the batch's), and still get their lone answers
    joining = [_llm(d, max_batch_size=len(calls), batch_wait_ms=0, max_new_tokens=n) for _, _, n in calls]
    got = [None] * len(calls)
    seen = observed_batch_sizes()

    def run2(i):
        got[i] = _outcome(joining[i], calls[i][0], calls[i][1])

    early = [threading.Thread(target=run2, args=(i,)) for i in (0, 2)]
    for t in early:
        t.start()
    deadline = time.monotonic() + 60
    while observed_batch_sizes() == seen and time.monotonic() < deadline:  # the first batch is decoding
        time.sleep(0.002)
    late = [threading.Thread(target=run2, args=(i,)) for i in (1, 3, 4)]
    for t in late:
        t.start()
    for t in early + late:
        t.join(120)
    grew = {k: v - seen.get(k, 0) for k, v in observed_batch_sizes().items() if v > seen.get(k, 0)}
    assert max(grew) >= 3, grew  # a step carried the early rows and joined ones together
    assert got == alone
    # through the batcher, a batch of one is the lone path: the same answer again
    assert _outcome(_llm(d, max_batch_size=4, batch_wait_ms=0), calls[0][0], calls[0][1]) == alone[0]


def test_openai_backend_keeps_requests_in_flight_up_to_max_concurrency():
    from cielr_core.reasoning.openai_backend import OpenAILLM

    gate = threading.Barrier(3, timeout=20)  # each request waits until three are in flight at once

    def answer(body):
        gate.wait()
        return '{"label": "cup", "n": 1}'

    with LLMEndpoint(answer) as ep:
        s = load_settings(profile="default", overrides={"llm": {
            "backend": "openai", "base_url": ep.url, "model": {"id": "q"}, "max_concurrency": 3, "max_retries": 0}})
        llm = OpenAILLM(s.llm)
        results: list = []

        def call():
            results.append(llm.complete([{"role": "user", "content": "x"}], Small).parsed)

        threads = [threading.Thread(target=call) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        llm.close()
    assert results == [Small(label="cup", n=1)] * 6 and ep.requests == 6
    assert ep.max_in_flight == 3 and not ep.errors  # concurrent, and never above max_concurrency


@pytest.mark.parametrize("bad", [0, -1])
def test_llm_concurrency_settings_refuse_nonsense(bad):
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="max_concurrency"):
        load_settings(overrides={"llm": {"max_concurrency": bad}})
    with pytest.raises(ValidationError, match="max_batch_size"):
        load_settings(overrides={"llm": {"max_batch_size": bad}})


"""In-process transformers backend with grammar-constrained decoding (xgrammar).

The model and tokenizer load once per process through :mod:`cielr_core.models`. A call renders
the messages with the tokenizer's chat template, then decodes token by token (KV cache, greedy
unless ``temperature > 0``) while an xgrammar matcher masks every token that would leave the
call's JSON schema (see :func:`cielr_core.reasoning.llm.grammar_schema`). Decoding stops when the
grammar accepts the end-of-turn token; an answer cut off at ``max_new_tokens`` is reported as an
:class:`AnswerParseError` (the loop re-asks, then fails clearly).

Why xgrammar: it compiles a JSON schema against the tokenizer's vocabulary once (cached per schema)
and then costs microseconds per token via a bitmask on the logits; it is maintained, it is the
default structured-output engine of vLLM and SGLang (so the in-process and the served backend
constrain the same way), and it needs no generation wrapper: our own decode loop applies the mask.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import weakref
from collections import Counter
from typing import TYPE_CHECKING, Any

import numpy as np
from pydantic import BaseModel

from cielr_core import models as registry
from cielr_core.reasoning.llm import AnswerParseError, LLMCall, LLMError, grammar_schema, parse_answer

if TYPE_CHECKING:  # pragma: no cover
    from cielr_core.config import LLMConfig, Settings

log = logging.getLogger(__name__)


class _Loaded:
    """Tokenizer, model and grammar machinery of one loaded model (cached by the registry)."""

    def __init__(self, tokenizer, model, device: str, processor=None):
        import xgrammar as xgr

        self.processor = processor  # vision-language models: renders images into the prompt
        self.tokenizer = tokenizer
        self.model = model
        self.device = device
        vocab = int(getattr(model.config, "vocab_size", 0) or len(tokenizer))
        self.tokenizer_info = xgr.TokenizerInfo.from_huggingface(tokenizer, vocab_size=vocab)
        self.compiler = xgr.GrammarCompiler(self.tokenizer_info)
        self.batch_matcher = xgr.BatchGrammarMatcher("auto")
        self.grammars: dict[str, Any] = {}
        self.lock = threading.Lock()  # one decode (batch) at a time on this model
        self._grammar_lock = threading.Lock()
        self._batcher: _Batcher | None = None
        self.is_vlm = hasattr(model.config, "vision_config")
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.pad_id = int(pad if pad is not None else 0)

    def grammar(self, schema_json: str):
        with self._grammar_lock:
            g = self.grammars.get(schema_json)
            if g is None:
                g = self.compiler.compile_json_schema(schema_json, any_whitespace=False, strict_mode=True)
                self.grammars[schema_json] = g
            return g

    def batcher(self) -> _Batcher:
        with self._grammar_lock:
            if self._batcher is None:
                self._batcher = _Batcher(self)
            return self._batcher


class TransformersLLM:
    """The embedded backend. ``complete`` is thread-safe: concurrent text calls on one model are
    decoded together as one batch (``llm.max_batch_size``, see :class:`_Batcher`), with the same
    answers as each call decoded alone; calls with an image decode one at a time."""

    def __init__(self, cfg: "LLMConfig", settings: "Settings"):
        self.cfg = cfg
        self.settings = settings
        self.source = settings.resolve_model(cfg.model)
        self.device = registry.resolve_device(cfg.device)
        self.dtype = registry.resolve_dtype(cfg.dtype, self.device)
        self._loaded: _Loaded | None = None

    @property
    def name(self) -> str:
        return f"transformers:{self.cfg.model.id}"

    def _load(self) -> _Loaded:
        if self._loaded is None:
            def loader() -> _Loaded:
                from transformers import AutoModelForCausalLM, AutoTokenizer

                if self.cfg.model.path and not os.path.exists(self.source):
                    hint = ("`cielr models tiny` writes it" if self.settings.profile == "tiny"
                            else "point llm.model.path at a local copy, or unset it to use the hub id")
                    raise registry.ModelUnavailableError(
                        f"llm model {self.cfg.model.id!r}: the local path {self.source} does not exist ({hint})")

                kw = registry.hf_kwargs(self.cfg.model.revision)
                from transformers import AutoConfig

                if hasattr(AutoConfig.from_pretrained(self.source, **kw), "vision_config"):
                    # a vision-language model (Qwen2.5-VL class): its processor renders images
                    from transformers import AutoModelForImageTextToText, AutoProcessor

                    proc = AutoProcessor.from_pretrained(self.source, **kw)
                    model = AutoModelForImageTextToText.from_pretrained(self.source, dtype=self.dtype, **kw)
                    return _Loaded(proc.tokenizer, model.to(self.device).eval(), self.device, processor=proc)
                tok = AutoTokenizer.from_pretrained(self.source, **kw)
                model = AutoModelForCausalLM.from_pretrained(self.source, dtype=self.dtype, **kw)
                model = model.to(self.device).eval()
                return _Loaded(tok, model, self.device)

            self._loaded = registry.get_model(
                "llm", self.source, loader, revision=self.cfg.model.revision, device=self.device,
                dtype=str(self.dtype).replace("torch.", ""),
            )
        return self._loaded

    def render(self, messages: list[dict]) -> str:
        lm = self._load()
        if not getattr(lm.tokenizer, "chat_template", None):
            raise LLMError(f"model {self.cfg.model.id!r} has no chat template; use an instruction-tuned model")
        return lm.tokenizer.apply_chat_template(
            [{"role": m["role"], "content": m["content"]} for m in messages], tokenize=False, add_generation_prompt=True
        )

    def _render_with_image(self, lm: _Loaded, messages: list[dict], image: np.ndarray) -> tuple[str, Any, dict]:
        """The chat with ``image`` as an image part of the last user message, rendered by the model's
        processor: (prompt text, encoded inputs, the vision inputs of the first forward)."""
        last = max(i for i, m in enumerate(messages) if m["role"] == "user")
        chat = [{"role": m["role"], "content": m["content"]} for m in messages]
        chat[last] = {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": messages[last]["content"]}]}
        prompt = lm.processor.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
        enc = lm.processor(text=[prompt], images=[np.asarray(image, dtype=np.uint8)], return_tensors="pt")
        vision = {k: v.to(lm.device) for k, v in enc.items() if k not in ("input_ids", "attention_mask")}
        if "pixel_values" in vision:
            vision["pixel_values"] = vision["pixel_values"].to(lm.model.dtype)
        return prompt, enc, vision

    def _decode(self, lm: _Loaded, prompt: str, gschema: str, enc: Any,
                vision_inputs: dict[str, Any]) -> tuple[list[int], bool, int]:
        """(completion tokens, whether the grammar ended, prompt tokens) for one rendered prompt."""
        max_new, temperature = int(self.cfg.max_new_tokens), float(self.cfg.temperature)
        if vision_inputs or int(self.cfg.max_batch_size) <= 1:
            # images (vision-language models) and llm.max_batch_size 1: this call decodes alone
            with lm.lock:
                compiled = lm.grammar(gschema)
                if enc is None:
                    enc = lm.tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
                input_ids = enc["input_ids"].to(lm.device)
                out, terminated = _decode_one(lm, input_ids, compiled, max_new, temperature, vision_inputs)
                return out, terminated, int(input_ids.shape[1])
        # concurrent calls on this model are decoded together (see _Batcher)
        req = _Request(prompt, lm.grammar(gschema), max_new, temperature,
                       int(self.cfg.max_batch_size), float(self.cfg.batch_wait_ms) / 1000.0)
        return lm.batcher().submit(req)

    def generate(self, messages: list[dict], json_schema: dict[str, Any]) -> tuple[str, dict[str, int], bool]:
        """Text-only constrained decoding against a JSON schema given as a dict (what an
        OpenAI-compatible request's ``response_format`` carries): (text, token counts, whether the
        JSON was complete before max_new_tokens). No validation beyond the grammar's."""
        lm = self._load()
        prompt = self.render(messages)
        out, terminated, n_prompt = self._decode(lm, prompt, json.dumps(grammar_schema(json_schema)), None, {})
        raw = lm.tokenizer.decode(out, skip_special_tokens=True)
        return raw, {"prompt": n_prompt, "completion": len(out) + (1 if terminated else 0)}, terminated

    def complete(
        self, messages: list[dict], schema: type[BaseModel], *, image: np.ndarray | None = None, call_name: str = ""
    ) -> LLMCall:
        lm = self._load()
        extra: dict[str, Any] = {"backend": "transformers", "model": self.cfg.model.id}
        vision_inputs: dict[str, Any] = {}
        if image is not None and lm.processor is not None:
            prompt, enc, vision_inputs = self._render_with_image(lm, messages, image)
            extra["image"] = (f"{image.shape[1]}x{image.shape[0]} image seen as "
                              f"{int((enc['input_ids'] == lm.model.config.image_token_id).sum())} vision tokens")
        elif image is not None:
            if self.settings.profile == "tiny":
                # toy text-only model standing in for a VLM: the image is not seen, and the trace says so
                extra["image"] = f"ignored: tiny text-only model ({image.shape[1]}x{image.shape[0]} image)"
            else:
                raise LLMError(
                    f"the in-process backend runs text-only causal LMs; model {self.cfg.model.id!r} cannot take an "
                    "image. Serve a vision-language model (e.g. Qwen2.5-VL) behind an OpenAI-compatible endpoint "
                    "and set backend: openai for it."
                )
        if not vision_inputs:
            prompt = self.render(messages)
            enc = None
        extra["prompt"] = prompt
        # key order matters: the grammar emits properties in schema order (pydantic's field order)
        gschema = json.dumps(grammar_schema(schema))
        t0 = time.perf_counter()
        out, terminated, n_prompt = self._decode(lm, prompt, gschema, enc, vision_inputs)
        latency = time.perf_counter() - t0
        raw = lm.tokenizer.decode(out, skip_special_tokens=True)
        tokens = {"prompt": n_prompt, "completion": len(out) + (1 if terminated else 0)}
        if not terminated:
            raise AnswerParseError(
                f"the answer was cut off at max_new_tokens={self.cfg.max_new_tokens} before the JSON was complete",
                raw=raw, latency_s=latency, tokens=tokens, extra=extra,
            )
        try:
            parsed = parse_answer(raw, schema)
        except ValueError as e:
            raise AnswerParseError(str(e), raw=raw, latency_s=latency, tokens=tokens, extra=extra) from None
        return LLMCall(parsed=parsed, raw=raw, latency_s=latency, tokens=tokens, extra=extra)


# ------------------------------------------------------------------------------------------------
# decoding: one call alone, or the concurrent calls of the images in flight as one batch
def _vocab_logits(lm: _Loaded, o) -> Any:
    import torch

    logits = o.logits[:, -1, :].float().cpu()
    v = lm.tokenizer_info.vocab_size
    if logits.shape[-1] < v:
        pad = torch.full((logits.shape[0], v - logits.shape[-1]), float("-inf"))
        logits = torch.cat([logits, pad], dim=-1)
    return logits


def _decode_one(lm: _Loaded, input_ids, compiled, max_new: int, temperature: float,
                vision_inputs: dict[str, Any]) -> tuple[list[int], bool]:
    """Grammar-constrained decoding of one prompt (KV cache; greedy unless ``temperature > 0``).
    Returns the tokens before the grammar's end and whether the grammar ended. Caller holds lm.lock."""
    import torch
    import xgrammar as xgr

    matcher = xgr.GrammarMatcher(compiled)
    bitmask = xgr.allocate_token_bitmask(1, lm.tokenizer_info.vocab_size)
    out: list[int] = []
    past = None
    cur = input_ids
    gen = torch.Generator(device="cpu").manual_seed(0) if temperature > 0 else None
    with torch.inference_mode():
        for _ in range(max_new):
            # the image enters with the prompt; later steps read it from the KV cache. Only the
            # last position's logits are computed (logits_to_keep=1): the prefill's lm_head is one row
            o = lm.model(input_ids=cur, past_key_values=past, use_cache=True, logits_to_keep=1,
                         **(vision_inputs if past is None else {}))
            past = o.past_key_values
            logits = _vocab_logits(lm, o)
            matcher.fill_next_token_bitmask(bitmask)
            xgr.apply_token_bitmask_inplace(logits, bitmask)
            tok = _pick(logits, 0, temperature, gen)
            if not matcher.accept_token(tok):  # pragma: no cover - the mask forbids it
                raise LLMError(f"grammar refused token {tok} that its own mask allowed")
            if matcher.is_terminated():
                return out, True
            out.append(tok)
            cur = torch.tensor([[tok]], device=lm.device)
    return out, False


def _pick(logits, row: int, temperature: float, gen) -> int:
    import torch

    if gen is None:
        return int(torch.argmax(logits[row : row + 1], dim=-1))
    probs = torch.softmax(logits[row : row + 1] / float(temperature), dim=-1)
    return int(torch.multinomial(probs, 1, generator=gen))


class _Request:
    __slots__ = ("prompt", "compiled", "max_new", "temperature", "max_batch", "wait_s", "arrived", "done",
                 "result", "error")

    def __init__(self, prompt: str, compiled, max_new: int, temperature: float, max_batch: int, wait_s: float):
        self.prompt, self.compiled, self.max_new, self.temperature = prompt, compiled, max_new, temperature
        self.max_batch, self.wait_s = max(1, max_batch), max(0.0, wait_s)
        self.arrived = time.monotonic()
        self.done = threading.Event()
        self.result: Any = None
        self.error: BaseException | None = None

    def finish(self, result: Any = None, error: BaseException | None = None) -> None:
        self.result, self.error = result, error
        self.done.set()


class _Row:
    """One request being decoded: its grammar matcher, generator, tokens so far."""

    __slots__ = ("req", "matcher", "gen", "out", "steps", "n_prompt")

    def __init__(self, req: _Request, n_prompt: int):
        import torch
        import xgrammar as xgr

        self.req, self.n_prompt = req, n_prompt
        self.matcher = xgr.GrammarMatcher(req.compiled)
        self.gen = torch.Generator(device="cpu").manual_seed(0) if req.temperature > 0 else None
        self.out: list[int] = []
        self.steps = 0


_BATCHERS: weakref.WeakSet[_Batcher] = weakref.WeakSet()


class _Batcher:
    """Continuous batching for one resident model. Callers queue requests and block; one worker
    thread takes the oldest request plus whatever else arrives within its wait (up to its batch
    size) and decodes them as one batch. Between decode steps, requests that arrived meanwhile join
    the running batch (their prompts prefilled together, their KV cache left-padded to the batch's
    length) and finished rows leave it, each caller getting its answer as soon as its row ends.

    Every row sees exactly the tokens and positions it would see alone (left padding is masked out,
    positions count from the row's first real token), so greedy answers equal batch-1 decoding; a
    request that runs alone from start to end goes through the lone path's very forward calls.
    If a batched forward fails, each of its rows is decoded again alone, so one bad request never
    takes the others down. ``sizes`` counts decode steps by the number of rows they carried."""

    def __init__(self, lm: _Loaded):
        self.lm = lm
        self.cv = threading.Condition()
        self.queue: list[_Request] = []
        self.thread: threading.Thread | None = None
        self.sizes: Counter[int] = Counter()
        _BATCHERS.add(self)

    def submit(self, req: _Request) -> tuple[list[int], bool, int]:
        with self.cv:
            self.queue.append(req)
            if self.thread is None or not self.thread.is_alive():
                self.thread = threading.Thread(target=self._run, name="cielr-llm-batcher", daemon=True)
                self.thread.start()
            self.cv.notify_all()
        req.done.wait()
        if req.error is not None:
            raise req.error
        return req.result

    def _take(self) -> list[_Request]:
        with self.cv:
            while not self.queue:
                self.cv.wait()
            first = self.queue[0]
            while len(self.queue) < first.max_batch:
                left = first.arrived + first.wait_s - time.monotonic()
                if left <= 0:
                    break
                self.cv.wait(left)
            batch = self.queue[: first.max_batch]
            del self.queue[: len(batch)]
            return batch

    def _poll(self, room: int) -> list[_Request]:
        with self.cv:
            batch = self.queue[:room]
            del self.queue[: len(batch)]
            return batch

    def _run(self) -> None:
        while True:
            batch = self._take()
            try:
                with self.lm.lock:
                    self._serve(batch)
            except BaseException as e:  # noqa: BLE001 - never leave a caller waiting
                for r in batch:
                    if not r.done.is_set():
                        r.finish(error=e)

    # -- one continuous batch, from its first requests until no row is left ----------------------
    def _serve(self, first: list[_Request]) -> None:
        import torch

        lm = self.lm
        max_batch = first[0].max_batch
        rows: list[_Row] = []
        state: dict[str, Any] = {}  # cache, attn, pos, cur of the running rows; masked: padding present
        pending = first
        with torch.inference_mode():
            while True:
                if pending:
                    self._admit(pending, rows, state)
                    pending = []
                if not rows:
                    return
                try:
                    o = self._forward(state, len(rows))
                    self._advance(rows, state, _vocab_logits(lm, o), o.past_key_values)
                except Exception as e:  # noqa: BLE001
                    self._alone(rows, e)
                    rows.clear()
                    state.clear()
                if rows and len(rows) < max_batch and _mergeable(state["cache"]):
                    pending = self._poll(max_batch - len(rows))

    def _forward(self, state: dict[str, Any], n: int):
        lm = self.lm
        self.sizes[n] += 1
        if not state["masked"]:
            # no padding anywhere: the lone path's call, word for word
            return lm.model(input_ids=state["cur"], past_key_values=state["cache"], use_cache=True,
                            logits_to_keep=1)
        return lm.model(input_ids=state["cur"], attention_mask=state["attn"], position_ids=state["pos"],
                        past_key_values=state["cache"], use_cache=True, logits_to_keep=1)

    def _admit(self, reqs: list[_Request], rows: list[_Row], state: dict[str, Any]) -> None:
        """Prefill ``reqs`` (left-padded among themselves), pick their first tokens, and merge
        their KV cache into the running batch's."""
        import torch

        lm = self.lm
        try:
            prompts = [lm.tokenizer(r.prompt, add_special_tokens=False)["input_ids"] for r in reqs]
            new = [_Row(r, len(p)) for r, p in zip(reqs, prompts)]
            width = max(len(p) for p in prompts)
            ids = torch.full((len(new), width), lm.pad_id, dtype=torch.long)
            attn = torch.zeros((len(new), width), dtype=torch.long)
            for i, p in enumerate(prompts):
                ids[i, width - len(p):] = torch.tensor(p, dtype=torch.long)
                attn[i, width - len(p):] = 1
            pos = (attn.cumsum(-1) - 1).clamp(min=0)
            sub = {"cur": ids.to(lm.device), "attn": attn.to(lm.device), "pos": pos.to(lm.device), "cache": None,
                   "masked": bool((attn == 0).any())}
            o = self._forward(sub, len(new))
            self._advance(new, sub, _vocab_logits(lm, o), o.past_key_values)
        except Exception as e:  # noqa: BLE001
            self._alone([_Row(r, 0) for r in reqs if not r.done.is_set()], e)
            return
        if not new:
            return
        if not rows:
            rows.extend(new)
            state.update(sub)
            return
        _merge(state, sub)
        rows.extend(new)
        state["masked"] = True

    def _advance(self, rows: list[_Row], state: dict[str, Any], logits, cache) -> None:
        """Pick, accept and record one token per row; finished rows get their answer and leave."""
        import torch
        import xgrammar as xgr

        lm = self.lm
        n = len(rows)
        bitmask = xgr.allocate_token_bitmask(n, lm.tokenizer_info.vocab_size)
        lm.batch_matcher.batch_fill_next_token_bitmask([r.matcher for r in rows], bitmask)
        xgr.apply_token_bitmask_inplace(logits, bitmask)
        greedy = torch.argmax(logits, dim=-1).tolist()  # each row's own argmax, as a lone call takes it
        keep, nxt = [], []
        for j, r in enumerate(rows):
            tok = int(greedy[j]) if r.gen is None else _pick(logits, j, r.req.temperature, r.gen)
            r.steps += 1
            if not r.matcher.accept_token(tok):  # pragma: no cover - the mask forbids it
                r.req.finish(error=LLMError(f"grammar refused token {tok} that its own mask allowed"))
            elif r.matcher.is_terminated():
                r.req.finish((r.out, True, r.n_prompt))
            else:
                r.out.append(tok)
                if r.steps >= r.req.max_new:
                    r.req.finish((r.out, False, r.n_prompt))
                else:
                    keep.append(j)
                    nxt.append(tok)
        dev = lm.device
        if len(keep) < n and keep:
            sel = torch.tensor(keep, dtype=torch.long, device=dev)
            cache.batch_select_indices(sel)
            state["attn"], state["pos"] = state["attn"][sel], state["pos"][sel]
        rows[:] = [rows[j] for j in keep]
        if not keep:
            state.clear()
            return
        state["cache"] = cache
        state["attn"] = torch.cat([state["attn"], torch.ones((len(keep), 1), dtype=torch.long, device=dev)], dim=-1)
        state["pos"] = state["pos"][:, -1:] + 1
        state["cur"] = torch.tensor(nxt, dtype=torch.long, device=dev).view(-1, 1)

    def _alone(self, rows: list[_Row], cause: BaseException) -> None:
        """A batched forward failed: decode each of its unfinished rows alone, from the start."""
        import torch

        todo = [r for r in rows if not r.req.done.is_set()]
        if len(todo) > 1:
            log.warning("a batch of %d LLM calls failed (%s: %s); decoding each alone",
                        len(todo), type(cause).__name__, cause)
        for r in todo:
            if len(rows) == 1:  # the failed forward was this row's alone: that is its answer
                r.req.finish(error=cause)
                continue
            try:
                ids = self.lm.tokenizer(r.req.prompt, add_special_tokens=False)["input_ids"]
                x = torch.tensor([ids], dtype=torch.long, device=self.lm.device)
                out, term = _decode_one(self.lm, x, r.req.compiled, r.req.max_new, r.req.temperature, {})
                r.req.finish((out, term, len(ids)))
            except BaseException as e:  # noqa: BLE001
                r.req.finish(error=e)


def _merge(state: dict[str, Any], sub: dict[str, Any]) -> None:
    """Append the rows of ``sub`` to the running batch ``state``: the shorter KV cache and mask are
    left-padded (zeros, masked out) to the longer one's length, then both are stacked."""
    import torch
    import torch.nn.functional as F

    a, b = state["cache"], sub["cache"]
    ta, tb = state["attn"].shape[1] - 1, sub["attn"].shape[1] - 1  # cached positions (cur is pending)
    t = max(ta, tb)
    for la, lb in zip(a.layers, b.layers):
        for name in ("keys", "values"):
            xa, xb = getattr(la, name), getattr(lb, name)
            xa = F.pad(xa, (0, 0, t - ta, 0)) if t > ta else xa
            xb = F.pad(xb, (0, 0, t - tb, 0)) if t > tb else xb
            setattr(la, name, torch.cat([xa, xb], dim=0))
    state["attn"] = torch.cat([F.pad(state["attn"], (t - ta, 0)), F.pad(sub["attn"], (t - tb, 0))], dim=0)
    state["pos"] = torch.cat([state["pos"], sub["pos"]], dim=0)
    state["cur"] = torch.cat([state["cur"], sub["cur"]], dim=0)


def _mergeable(cache) -> bool:
    """Rows can join a running batch when every cache layer is a plain dynamic (full-attention) one."""
    from transformers.cache_utils import DynamicLayer

    return all(type(la) is DynamicLayer for la in getattr(cache, "layers", [None]))


def observed_batch_sizes() -> dict[int, int]:
    """Decode steps of the in-process LLMs of this process, by the rows they carried (benchmarks)."""
    total: Counter[int] = Counter()
    for b in list(_BATCHERS):
        total.update(b.sizes)
    return dict(sorted(total.items()))

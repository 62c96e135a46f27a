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


def _decode_rows(lm: _Loaded, prompts: list[list[int]], reqs: list[_Request]) -> list[Any]:
    """Several prompts decoded as one batch: left padding (attention mask, positions counted from
    each row's first real token, so every row sees the positions it would see alone), one grammar
    matcher per row (their bitmasks filled as one batch), per-row stop (grammar end, including the
    end-of-turn token, or the row's max_new_tokens); a finished row leaves the batch and the KV
    cache at once. Greedy rows pick the argmax of their own row; sampled rows draw from their own
    generator seeded as a lone call's. Returns (tokens, terminated) or an exception per row.
    Caller holds lm.lock."""
    import torch
    import xgrammar as xgr

    n = len(prompts)
    dev = lm.device
    width = max(len(p) for p in prompts)
    input_ids = torch.full((n, width), lm.pad_id, dtype=torch.long)
    attn = torch.zeros((n, width), dtype=torch.long)
    for i, p in enumerate(prompts):
        input_ids[i, width - len(p):] = torch.tensor(p, dtype=torch.long)
        attn[i, width - len(p):] = 1
    pos = (attn.cumsum(-1) - 1).clamp(min=0)
    matchers = [xgr.GrammarMatcher(r.compiled) for r in reqs]
    gens = [torch.Generator(device="cpu").manual_seed(0) if r.temperature > 0 else None for r in reqs]
    bitmask = xgr.allocate_token_bitmask(n, lm.tokenizer_info.vocab_size)
    results: list[Any] = [([], False) for _ in reqs]
    outs: list[list[int]] = [[] for _ in reqs]
    active = [i for i, r in enumerate(reqs) if r.max_new > 0]
    if len(active) < n:
        keep = torch.tensor(active, dtype=torch.long)
        input_ids, attn, pos = input_ids[keep], attn[keep], pos[keep]
    if not active:
        return results
    steps = [0] * n
    cur, attn, pos = input_ids.to(dev), attn.to(dev), pos.to(dev)
    past = None
    with torch.inference_mode():
        while True:
            o = lm.model(input_ids=cur, attention_mask=attn, position_ids=pos, past_key_values=past,
                         use_cache=True, logits_to_keep=1)
            past = o.past_key_values
            logits = _vocab_logits(lm, o)
            k = len(active)
            lm.batch_matcher.batch_fill_next_token_bitmask([matchers[i] for i in active], bitmask)
            xgr.apply_token_bitmask_inplace(logits, bitmask[:k])
            keep, nxt = [], []
            for j, i in enumerate(active):
                tok = _pick(logits, j, reqs[i].temperature, gens[i])
                steps[i] += 1
                if not matchers[i].accept_token(tok):  # pragma: no cover - the mask forbids it
                    results[i] = LLMError(f"grammar refused token {tok} that its own mask allowed")
                    continue
                if matchers[i].is_terminated():
                    results[i] = (outs[i], True)
                    continue
                outs[i].append(tok)
                if steps[i] >= reqs[i].max_new:
                    results[i] = (outs[i], False)
                    continue
                keep.append(j)
                nxt.append(tok)
            if not keep:
                return results
            if len(keep) < k:
                sel = torch.tensor(keep, dtype=torch.long, device=dev)
                past.batch_select_indices(sel)
                attn, pos = attn[sel], pos[sel]
                active = [active[j] for j in keep]
            attn = torch.cat([attn, torch.ones((len(keep), 1), dtype=attn.dtype, device=dev)], dim=-1)
            pos = pos[:, -1:] + 1
            cur = torch.tensor(nxt, dtype=torch.long, device=dev).view(-1, 1)


class _Request:
    __slots__ = (
        "arrived",
        "compiled",
        "done",
        "error",
        "max_batch",
        "max_new",
        "prompt",
        "result",
        "temperature",
        "wait_s",
    )

    def __init__(self, prompt: str, compiled, max_new: int, temperature: float, max_batch: int, wait_s: float):
        self.prompt, self.compiled, self.max_new, self.temperature = prompt, compiled, max_new, temperature
        self.max_batch, self.wait_s = max(1, max_batch), max(0.0, wait_s)
        self.arrived = time.monotonic()
        self.done = threading.Event()
        self.result: Any = None
        self.error: BaseException | None = None


_BATCHERS: weakref.WeakSet[_Batcher] = weakref.WeakSet()


class _Batcher:
    """A small dynamic batcher for one resident model: callers queue requests and block; one
    worker thread takes the oldest request plus whatever else arrives within its wait (up to its
    batch size), decodes them together, and hands each caller its own result. A batch of one
    decodes exactly as a lone call. If a batch fails as a whole, each of its rows is decoded
    alone, so one bad request never takes the others down. ``sizes`` counts the batches by size."""

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

    def _run(self) -> None:
        while True:
            batch = self._take()
            try:
                results = self._decode(batch)
            except BaseException as e:  # noqa: BLE001 - handed to the callers
                if len(batch) == 1:
                    results = [e]
                else:
                    log.warning("a batch of %d LLM calls failed (%s: %s); decoding each alone",
                                len(batch), type(e).__name__, e)
                    results = []
                    for r in batch:
                        try:
                            results.extend(self._decode([r]))
                        except BaseException as e1:  # noqa: BLE001
                            results.append(e1)
            for r, res in zip(batch, results):
                if isinstance(res, BaseException):
                    r.error = res
                else:
                    r.result = res
                r.done.set()

    def _decode(self, batch: list[_Request]) -> list[Any]:
        import torch

        lm = self.lm
        with lm.lock:
            prompts = [lm.tokenizer(r.prompt, add_special_tokens=False)["input_ids"] for r in batch]
            self.sizes[len(batch)] += 1
            if len(batch) == 1:
                ids = torch.tensor([prompts[0]], dtype=torch.long, device=lm.device)
                rows: list[Any] = [_decode_one(lm, ids, batch[0].compiled, batch[0].max_new, batch[0].temperature, {})]
            else:
                rows = _decode_rows(lm, prompts, batch)
        return [row if isinstance(row, BaseException) else (row[0], row[1], len(p)) for row, p in zip(rows, prompts)]


def observed_batch_sizes() -> dict[int, int]:
    """How many batches of each size the in-process LLMs of this process decoded (benchmarks)."""
    total: Counter[int] = Counter()
    for b in list(_BATCHERS):
        total.update(b.sizes)
    return dict(sorted(total.items()))

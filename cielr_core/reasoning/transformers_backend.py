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
        self.grammars: dict[str, Any] = {}
        self.lock = threading.Lock()
        self.is_vlm = hasattr(model.config, "vision_config")

    def grammar(self, schema_json: str):
        g = self.grammars.get(schema_json)
        if g is None:
            g = self.compiler.compile_json_schema(schema_json, any_whitespace=False, strict_mode=True)
            self.grammars[schema_json] = g
        return g


class TransformersLLM:
    """The embedded backend. ``complete`` is thread-safe (one generation at a time per model)."""

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

    def complete(
        self, messages: list[dict], schema: type[BaseModel], *, image: np.ndarray | None = None, call_name: str = ""
    ) -> LLMCall:
        import torch
        import xgrammar as xgr

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
        with lm.lock:
            compiled = lm.grammar(gschema)
            matcher = xgr.GrammarMatcher(compiled)
            bitmask = xgr.allocate_token_bitmask(1, lm.tokenizer_info.vocab_size)
            if enc is None:
                enc = lm.tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
            input_ids = enc["input_ids"].to(lm.device)
            n_prompt = int(input_ids.shape[1])
            out: list[int] = []
            past = None
            cur = input_ids
            gen = None
            if self.cfg.temperature > 0:
                gen = torch.Generator(device="cpu").manual_seed(0)
            terminated = False
            with torch.inference_mode():
                for _ in range(int(self.cfg.max_new_tokens)):
                    # the image enters with the prompt; later steps read it from the KV cache
                    o = lm.model(input_ids=cur, past_key_values=past, use_cache=True,
                                 **(vision_inputs if past is None else {}))
                    past = o.past_key_values
                    logits = o.logits[:, -1, :].float().cpu()
                    if logits.shape[-1] < lm.tokenizer_info.vocab_size:
                        pad = torch.full((1, lm.tokenizer_info.vocab_size - logits.shape[-1]), float("-inf"))
                        logits = torch.cat([logits, pad], dim=-1)
                    matcher.fill_next_token_bitmask(bitmask)
                    xgr.apply_token_bitmask_inplace(logits, bitmask)
                    if gen is None:
                        tok = int(torch.argmax(logits, dim=-1))
                    else:
                        probs = torch.softmax(logits / float(self.cfg.temperature), dim=-1)
                        tok = int(torch.multinomial(probs, 1, generator=gen))
                    if not matcher.accept_token(tok):  # pragma: no cover - the mask forbids it
                        raise LLMError(f"grammar refused token {tok} that its own mask allowed")
                    if matcher.is_terminated():
                        terminated = True
                        break
                    out.append(tok)
                    cur = torch.tensor([[tok]], device=lm.device)
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

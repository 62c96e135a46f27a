"""The LLM factory: the backend a config names. Beside llm.py (the interface and answer parsing,
which the backends import) rather than in it, so the imports run one way: factory -> backends -> llm."""

from __future__ import annotations

from typing import TYPE_CHECKING

from cielr_core.reasoning.llm import LLM

if TYPE_CHECKING:
    from cielr_core.config import LLMConfig, Settings


def make_llm(llm_cfg: LLMConfig, settings: Settings) -> LLM:
    """The backend named by ``llm_cfg.backend`` (``transformers`` in-process or ``openai`` HTTP)."""
    if llm_cfg.backend == "openai":
        from cielr_core.reasoning.openai_backend import OpenAILLM

        return OpenAILLM(llm_cfg)
    if llm_cfg.backend == "transformers":
        from cielr_core.reasoning.transformers_backend import TransformersLLM

        return TransformersLLM(llm_cfg, settings)
    raise ValueError(f"unknown LLM backend {llm_cfg.backend!r}")

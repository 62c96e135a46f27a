"""Reasoning (CIELR §3.4): LLM backends, the decompose/assess/update/reason loop over the SSR,
built-in spatial relations and a sandbox for LLM-written spatial code. No prefect here."""

from cielr_core.reasoning.factory import make_llm
from cielr_core.reasoning.llm import (
    LLM,
    AnswerParseError,
    InvalidAnswerError,
    LLMCall,
    LLMError,
    grammar_schema,
    parse_answer,
)
from cielr_core.reasoning.loop import Reasoner
from cielr_core.reasoning.sandbox import (
    SandboxError,
    SandboxRefused,
    SandboxUnavailable,
    check_code,
    run_code,
    sandbox_status,
)
from cielr_core.reasoning.spatial import builtin_relations
from cielr_core.reasoning.trace import Trace

# Bump when the loop's logic changes what a given config produces (enters the reasoning digest
# with the prompt version from the config).
REASONING_CODE_VERSION = "3"
# 2: spatial code only behind the OS sandbox; spatial code that stays refused no longer fails the image
# 3: relations refreshed after semantic updates, optional steps that stay invalid no longer fail the
#    image, finer/coarser stack, the instruction's objects join the query set

__all__ = [
    "LLM", "LLMCall", "LLMError", "AnswerParseError", "InvalidAnswerError", "make_llm", "parse_answer",
    "grammar_schema", "Reasoner", "Trace", "SandboxError", "SandboxRefused", "SandboxUnavailable", "check_code",
    "run_code", "sandbox_status",
    "builtin_relations", "REASONING_CODE_VERSION",
]

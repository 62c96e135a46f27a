"""Content-addressed keys: every artifact's key derives from what determines it, and the Prefect
cache key of the task that makes it is the same digest. A rerun, a retry, a new nightly run or a
run on another machine all find the same results; changing only the LLM never re-runs perception.
"""

from __future__ import annotations

import hashlib
from typing import Any

from cielr_core.config import Settings
from storage import sha256_json


def text_sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def perception_digest(s: Settings) -> str:
    from cielr_core.perception import (
        ASSEMBLE_CODE_VERSION,
        DEPTH_CODE_VERSION,
        LABEL_CODE_VERSION,
        SEGMENT_CODE_VERSION,
    )

    return s.perception.digest(SEGMENT_CODE_VERSION, LABEL_CODE_VERSION, DEPTH_CODE_VERSION, ASSEMBLE_CODE_VERSION)


def segment_digest(s: Settings, overrides: dict[str, Any] | None) -> str:
    from cielr_core.perception import SEGMENT_CODE_VERSION

    return s.perception.sam2.digest(SEGMENT_CODE_VERSION, s.perception.dtype, overrides or {})


def detect_digest(s: Settings, extra_queries: list[str] | None) -> str:
    from cielr_core.perception import LABEL_CODE_VERSION

    return s.perception.owlv2.digest(LABEL_CODE_VERSION, s.perception.dtype, sorted(extra_queries or []))


def depth_digest(s: Settings) -> str:
    from cielr_core.perception import DEPTH_CODE_VERSION

    return s.perception.depth.digest(DEPTH_CODE_VERSION, s.perception.dtype)


def reasoning_digest(s: Settings) -> str:
    """LLM + loop settings + prompt version + code version; perception settings enter too, since
    semantic updates inside the loop re-run perception models."""
    from cielr_core.reasoning import REASONING_CODE_VERSION

    return sha256_json([s.llm.digest(), s.reasoning.digest(REASONING_CODE_VERSION), perception_digest(s)])


def editing_digest(s: Settings, seed: int) -> str:
    from cielr_core.editing import EDITING_CODE_VERSION

    return s.editing.digest(EDITING_CODE_VERSION, seed)


def ssr_prefix(image_sha: str, s: Settings) -> str:
    return f"ssr/{image_sha}/{perception_digest(s)}"


def reason_prefix(ssr_digest: str, instruction: str, s: Settings) -> str:
    return f"reason/{ssr_digest}/{text_sha(instruction)}/{reasoning_digest(s)}"


def output_prefix(image_sha: str, instruction: str, s: Settings, seed: int) -> str:
    d = sha256_json([perception_digest(s), reasoning_digest(s), editing_digest(s, seed)])
    return f"out/{image_sha}/{text_sha(instruction)}/{d}"

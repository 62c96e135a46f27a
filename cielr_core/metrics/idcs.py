"""IDCS (instruction-directed change score): a vision-language model describes the differences
between the image before and after the edit; an LLM scores, 1 to 5, how well those differences
carry out the instruction. Both answers are kept.

The models are duck-typed: any object with ``complete(messages, schema, *, image=None,
call_name="")`` returning an object with ``.parsed`` (an instance of ``schema`` or a dict) and
``.raw`` (the text), the protocol of :mod:`cielr_core.reasoning.llm`. :func:`make_idcs_judges`
builds the real ones from the config (``eval.vlm`` and ``llm``), both forced to temperature 0.
The VLM sees ONE image (an HxWx3 uint8 array): before and after side by side (left = before,
right = after) with a white gutter, so any single-image VLM works.

Prompts are versioned as files: ``prompts/idcs/v<version>/{vlm_system,vlm_user,llm_system,
llm_user}.txt`` beside this module (``eval.idcs_prompt_version``). A new wording is a new version
directory, never an edit of an existing one; the version is stored with every score.
"""

from __future__ import annotations

import functools
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from pydantic import BaseModel, Field

from cielr_core.metrics.pixel import as_rgb

PROMPTS_DIR = Path(__file__).resolve().parent / "prompts" / "idcs"
PROMPT_PARTS = ("vlm_system", "vlm_user", "llm_system", "llm_user")


class DifferenceDescription(BaseModel):
    differences: str = Field(description="what changed between the left (before) and right (after) image")


class IDCSJudgement(BaseModel):
    reason: str = Field(description="one or two sentences")
    score: int = Field(ge=1, le=5, description="1 = instruction not carried out at all, 5 = fully and only it")


def prompt_versions() -> list[str]:
    return sorted(p.name[1:] for p in PROMPTS_DIR.glob("v*") if p.is_dir())


@functools.cache
def load_prompts(version: str) -> dict[str, str]:
    """The four prompt texts of one version (``ValueError`` for an unknown version)."""
    d = PROMPTS_DIR / f"v{version}"
    if not d.is_dir():
        raise ValueError(f"unknown IDCS prompt version {version!r}; known: {', '.join(prompt_versions()) or 'none'}")
    out = {}
    for part in PROMPT_PARTS:
        f = d / f"{part}.txt"
        if not f.is_file():
            raise ValueError(f"IDCS prompt version {version!r} lacks {f.name}")
        out[part] = f.read_text(encoding="utf-8").strip()
    return out


class _PromptsView(dict):
    """``IDCS_PROMPTS[version]`` -> the prompt texts, read from the files on first use."""

    def __missing__(self, key):
        self[key] = load_prompts(str(key))
        return self[key]

    def __iter__(self):
        return iter(prompt_versions())


IDCS_PROMPTS = _PromptsView()


@dataclass(frozen=True)
class IDCSResult:
    score: int
    vlm_answer: str
    llm_answer: str
    prompt_version: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def side_by_side(before, after, gutter: int = 8) -> np.ndarray:
    """Before (left) and after (right) in one HxWx3 uint8 array, the after image scaled to the
    before image's height."""
    a, b = as_rgb(before), as_rgb(after)
    if b.shape[0] != a.shape[0]:
        b = np.asarray(Image.fromarray(b).resize((round(b.shape[1] * a.shape[0] / b.shape[0]), a.shape[0])))
    out = np.full((a.shape[0], a.shape[1] + gutter + b.shape[1], 3), 255, np.uint8)
    out[:, : a.shape[1]] = a
    out[:, a.shape[1] + gutter :] = b
    return out


def _field(parsed: Any, name: str) -> Any:
    if isinstance(parsed, dict):
        return parsed.get(name)
    return getattr(parsed, name, None)


def idcs(before, after, instruction: str, *, vlm, llm, prompt_version: str = "1") -> IDCSResult:
    """Run the two calls and return the score with both answers. Raises ``ValueError`` for an
    unknown prompt version or an answer outside 1..5 (the backends validate; this is a last guard)."""
    p = load_prompts(str(prompt_version))
    vlm_messages = [{"role": "system", "content": p["vlm_system"]}, {"role": "user", "content": p["vlm_user"]}]
    v = vlm.complete(vlm_messages, DifferenceDescription, image=side_by_side(before, after), call_name="idcs_describe")
    differences = _field(v.parsed, "differences")
    if not isinstance(differences, str):
        raise ValueError(f"IDCS: the VLM answer has no 'differences' text: {v.raw!r}")  # noqa: TRY004
    llm_messages = [
        {"role": "system", "content": p["llm_system"]},
        {"role": "user", "content": p["llm_user"].format(instruction=instruction.strip(), differences=differences.strip())},
    ]
    j = llm.complete(llm_messages, IDCSJudgement, call_name="idcs_score")
    score = _field(j.parsed, "score")
    if isinstance(score, bool) or not isinstance(score, int) or not 1 <= score <= 5:
        raise ValueError(f"IDCS: the LLM score must be an integer 1..5, got {score!r}")
    return IDCSResult(score=score, vlm_answer=str(v.raw), llm_answer=str(j.raw), prompt_version=str(prompt_version))


def make_idcs_judges(settings) -> tuple[Any, Any]:
    """``(vlm, llm)`` for IDCS from ``settings.eval.vlm`` and ``settings.llm``, both at temperature 0,
    built by :func:`cielr_core.reasoning.make_llm` (imported here, lazily). Call once per process /
    worker, not per sample. Raises ``ModelUnavailableError`` when a model cannot be loaded: the
    caller then reports IDCS as missing."""
    from cielr_core.models import ModelUnavailableError

    try:
        from cielr_core.reasoning.factory import make_llm
    except ImportError as e:  # the reasoning package is absent or broken
        raise ModelUnavailableError(f"IDCS judges unavailable: cannot import cielr_core.reasoning: {e}") from e
    vlm_cfg = settings.eval.vlm.model_copy(update={"temperature": 0.0})
    llm_cfg = settings.llm.model_copy(update={"temperature": 0.0})
    try:
        return make_llm(vlm_cfg, settings), make_llm(llm_cfg, settings)
    except ModelUnavailableError:
        raise
    except (OSError, ValueError, ImportError) as e:
        raise ModelUnavailableError(f"IDCS judges unavailable: {type(e).__name__}: {e}") from e

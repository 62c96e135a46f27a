"""The edit plan: what reasoning hands to editing.

A plan is an ordered list of steps. Step j is executed on the output of step j-1. Each step names
the target object ids *in the SSR it was reasoned on* (``ssr_digest``), the operation, and an
explicit prompt for the inpainter; ``add`` steps carry a placement instead of targets.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from storage.canonical import canonical_json, sha256_bytes

Operation = Literal["remove", "replace", "add", "recolor"]


class Placement(BaseModel):
    """Where an ``add`` goes: relative to an object, or an explicit box."""

    model_config = ConfigDict(extra="forbid")

    relation: Literal["on", "near", "left_of", "right_of", "above", "below", "box"]
    object_id: int | None = None
    box: tuple[float, float, float, float] | None = Field(default=None, description="(x0, y0, x1, y1) pixels")
    size_fraction: float = Field(default=0.25, gt=0, le=1, description="placement size relative to the anchor")

    @model_validator(mode="after")
    def _anchor(self) -> "Placement":
        if self.relation == "box":
            if self.box is None:
                raise ValueError("placement 'box' needs a box")
        elif self.object_id is None:
            raise ValueError(f"placement {self.relation!r} needs an object_id")
        return self


class EditStep(BaseModel):
    model_config = ConfigDict(extra="forbid")

    subtask: str = Field(description="the sub-task this step carries out, in words")
    status: Literal["ok", "no_target"] = "ok"
    reason: str = Field(default="", description="why these targets (or why none)")
    operation: Operation | None = None
    target_ids: list[int] = Field(default_factory=list)
    prompt: str = Field(default="", description="explicit instruction/prompt for the inpainter")
    placement: Placement | None = None
    ssr_digest: str | None = Field(default=None, description="digest of the SSR version the ids refer to")

    @model_validator(mode="after")
    def _consistent(self) -> "EditStep":
        if self.status == "ok":
            if self.operation is None:
                raise ValueError("an ok step needs an operation")
            if self.operation == "add":
                if self.placement is None:
                    raise ValueError("an 'add' step needs a placement")
            elif not self.target_ids:
                raise ValueError(f"a {self.operation!r} step needs target_ids")
        return self


class EditPlan(BaseModel):
    model_config = ConfigDict(extra="forbid")

    instruction: str
    steps: list[EditStep] = Field(default_factory=list)

    @property
    def actionable(self) -> list[EditStep]:
        return [s for s in self.steps if s.status == "ok"]

    def canonical_json(self) -> bytes:
        return canonical_json(self.model_dump(mode="json"))

    def digest(self) -> str:
        return sha256_bytes(self.canonical_json())

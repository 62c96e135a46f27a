"""The edit plan: what reasoning hands to editing.

A plan is an ordered list of steps. Step j is executed on the output of step j-1. Each step names
the target object ids *in the SSR it was reasoned on* (``ssr_digest``), the operation, and an
explicit prompt for the inpainter; ``add`` steps carry a placement instead of targets.

Plan schema versions (``EditPlan.schema_version``, written into every plan; :func:`read_plan` reads
a plan written before the field existed as version 1):

* 1 -- operations ``remove``, ``replace``, ``add``, ``recolor``;
* 2 -- adds ``move`` (targets + a placement: where the object goes), ``resize`` (targets + ``scale``
  about an ``anchor``), ``transform`` (targets + an explicit instruction applied inside their
  region) and ``global`` (an explicit instruction for the whole image, no targets), and the optional
  ``color`` of a ``recolor``. Version 1 plans read unchanged.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from cielr_core.canonical import canonical_json, sha256_bytes

PLAN_SCHEMA_VERSION = 2

Operation = Literal["remove", "replace", "add", "recolor", "move", "resize", "transform", "global"]
#: the operations of each plan schema version
OPERATIONS_BY_VERSION: dict[int, tuple[str, ...]] = {
    1: ("remove", "replace", "add", "recolor"),
    2: ("remove", "replace", "add", "recolor", "move", "resize", "transform", "global"),
}
#: operations whose change is bounded by a mask (pixels outside it are the input's, exactly)
MASK_BOUNDED = ("remove", "replace", "add", "recolor", "move", "resize", "transform")
#: operations whose change is the whole image (preservation is measured and reported, not guaranteed)
SCENE_WIDE = ("global",)
Anchor = Literal["center", "bottom", "top", "left", "right", "bottom_left", "bottom_right", "top_left", "top_right"]


class Placement(BaseModel):
    """Where an ``add`` goes (or where a ``move`` takes its object): relative to an object, or an
    explicit box."""

    model_config = ConfigDict(extra="forbid")

    relation: Literal["on", "near", "left_of", "right_of", "above", "below", "box"]
    object_id: int | None = None
    box: tuple[float, float, float, float] | None = Field(default=None, description="(x0, y0, x1, y1) pixels")
    size_fraction: float = Field(default=0.25, gt=0, le=1, description="placement size relative to the anchor")

    @model_validator(mode="after")
    def _anchor(self) -> Placement:
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
    prompt: str = Field(default="", description="explicit instruction/prompt for the inpainter or editor")
    placement: Placement | None = Field(default=None, description="add: where it goes; move: where the object goes")
    scale: float | None = Field(default=None, gt=0, le=8, description="resize: factor on the object's size")
    anchor: Anchor | None = Field(default=None, description="resize: the point of the object's box that stays put")
    color: str | None = Field(default=None, max_length=40, description="recolor: a colour name or #rrggbb")
    ssr_digest: str | None = Field(default=None, description="digest of the SSR version the ids refer to")

    @model_validator(mode="after")
    def _consistent(self) -> EditStep:
        if self.status == "ok":
            op = self.operation
            if op is None:
                raise ValueError("an ok step needs an operation")
            if op in ("add", "move") and self.placement is None:
                raise ValueError(f"an {op!r} step needs a placement")
            if op == "global":
                if self.target_ids:
                    raise ValueError("a 'global' step edits the whole image: it takes no target_ids")
                if not self.prompt.strip():
                    raise ValueError("a 'global' step needs the instruction (prompt)")
            elif op != "add" and not self.target_ids:
                raise ValueError(f"a {op!r} step needs target_ids")
            if op == "resize" and self.scale is None:
                raise ValueError("a 'resize' step needs a scale")
            if op == "transform" and not self.prompt.strip():
                raise ValueError("a 'transform' step needs the instruction (prompt)")
        return self


class EditPlan(BaseModel):
    model_config = ConfigDict(extra="forbid")

    schema_version: int = Field(default=PLAN_SCHEMA_VERSION, description="plan schema version (absent = 1)")
    instruction: str
    steps: list[EditStep] = Field(default_factory=list)

    @model_validator(mode="after")
    def _operations_of_version(self) -> EditPlan:
        ops = OPERATIONS_BY_VERSION.get(self.schema_version)
        if ops is None:
            raise ValueError(f"unknown plan schema_version {self.schema_version}; this code reads "
                             f"{', '.join(map(str, sorted(OPERATIONS_BY_VERSION)))}")
        for s in self.steps:
            if s.operation is not None and s.operation not in ops:
                raise ValueError(f"operation {s.operation!r} is not in plan schema version {self.schema_version} "
                                 f"(it has {', '.join(ops)})")
        return self

    @property
    def actionable(self) -> list[EditStep]:
        return [s for s in self.steps if s.status == "ok"]

    def canonical_json(self) -> bytes:
        return canonical_json(self.model_dump(mode="json"))

    def digest(self) -> str:
        return sha256_bytes(self.canonical_json())


def read_plan(data: bytes | str | dict) -> EditPlan:
    """A plan from its JSON (bytes, text or parsed): one written before plans were versioned (no
    ``schema_version``) is read as version 1, and any operation outside its version is an error."""
    import json

    if isinstance(data, (bytes, str)):
        data = json.loads(data)
    if not isinstance(data, dict):
        raise TypeError(f"a plan is a JSON object, got {type(data).__name__}")
    if "schema_version" not in data:
        data = {**data, "schema_version": 1}
    return EditPlan.model_validate(data)

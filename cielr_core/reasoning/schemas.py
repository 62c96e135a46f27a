"""The answer schemas of the reasoning calls.

Every LLM call declares one of these; backends constrain decoding to its JSON schema and the
answer is validated with pydantic. Object ids are a ``Literal`` of the ids present in the SSR the
question is about (a JSON-schema ``enum``), so a model cannot name an object that does not exist;
an answer that does anyway (an endpoint that ignores the schema) fails validation and is re-asked.
Strings are bounded; numbers are bounded so that constrained decoding always terminates.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Discriminator, Field, RootModel, Tag, create_model

Text = Annotated[str, Field(max_length=400)]
SubTask = Annotated[str, Field(min_length=1, max_length=300)]
Label = Annotated[str, Field(min_length=1, max_length=40)]
CodeLine = Annotated[str, Field(max_length=160)]


class _Answer(BaseModel):
    model_config = ConfigDict(extra="forbid")


DEFAULT_TEXT_CHARS = 400


def _bounded(n: int, default: int, min_length: int = 0) -> Any:
    """A string bounded by ``min(default, n)`` characters (``reasoning.max_text_chars``)."""
    return Annotated[str, Field(min_length=min_length, max_length=max(min_length + 1, min(default, n)))]


# Every answer writes its reasoning FIRST (``reason``), then its verdict: a model that decodes left
# to right then thinks before it commits to ``need`` / ``status`` / an operation.
QUERY_OBJECTS_MAX = 8
QUERY_OBJECTS_DESCRIPTION = ("object names the instruction mentions or implies, as detector queries "
                             "(short nouns such as 'wall clock'); added to the image's query set")


class Decomposition(_Answer):
    reason: Text
    subtasks: list[SubTask] = Field(min_length=1, max_length=8, description="ordered, self-contained edit sub-tasks")
    query_objects: list[Label] = Field(default_factory=list, max_length=QUERY_OBJECTS_MAX,
                                       description=QUERY_OBJECTS_DESCRIPTION)


class Assessment(_Answer):
    reason: Text
    need: Literal["none", "semantic", "spatial"] = Field(
        description="none: the SSR suffices; semantic: labels are missing or wrong; spatial: geometry is missing"
    )
    queries: list[Label] = Field(default_factory=list, max_length=8,
                                 description="semantic: new open-vocabulary label queries for the detector")
    segmentation: Literal["keep", "finer", "coarser"] = Field(
        default="keep", description="semantic: ask the segmenter for more (finer) or fewer (coarser) masks"
    )


class SpatialCode(_Answer):
    reason: Text
    code_lines: list[CodeLine] = Field(min_length=1, max_length=60,
                                       description="Python lines; must assign result = {id: {attr: value}}")

    @property
    def code(self) -> str:
        return "\n".join(self.code_lines)


@lru_cache(maxsize=32)
def assessment_schema(text_chars: int = DEFAULT_TEXT_CHARS) -> type[BaseModel]:
    """:class:`Assessment` with its free text bounded by ``text_chars`` (the tiny profile bounds
    strings tightly so that a random-weight model's constrained output always terminates)."""
    if text_chars >= DEFAULT_TEXT_CHARS:
        return Assessment
    f = Assessment.model_fields
    return create_model(
        "Assessment", __base__=_Answer,
        reason=(_bounded(text_chars, 400), ...),
        need=(f["need"].annotation, Field(description=f["need"].description)),
        queries=(list[_bounded(text_chars, 40, 1)], Field(default_factory=list, max_length=8,
                                                           description=f["queries"].description)),
        segmentation=(f["segmentation"].annotation, Field(default="keep", description=f["segmentation"].description)),
    )


@lru_cache(maxsize=32)
def spatial_code_schema(text_chars: int = DEFAULT_TEXT_CHARS) -> type[BaseModel]:
    if text_chars >= DEFAULT_TEXT_CHARS:
        return SpatialCode
    return create_model(
        "SpatialCode", __base__=SpatialCode,
        reason=(_bounded(text_chars, 400), ...),
        code_lines=(list[_bounded(text_chars, 160)], Field(min_length=1, max_length=max(1, min(60, text_chars // 4)),
                                                         description=SpatialCode.model_fields["code_lines"].description)),
    )


RELATIONS = ("on", "near", "left_of", "right_of", "above", "below", "box")
OPERATIONS = ("remove", "replace", "add", "recolor")
#: prompt set 3 on: move, resize, transform, global, and recolor with a named colour (plan schema 2)
OPERATIONS_V3 = ("remove", "replace", "add", "recolor", "move", "resize", "transform", "global")
ANCHORS = ("center", "bottom", "top", "left", "right", "bottom_left", "bottom_right", "top_left", "top_right")


def operations_for_prompt_version(version: str) -> tuple[str, ...]:
    """The operations the reason answer may take under a prompt set (the prompts describe them)."""
    return OPERATIONS if str(version) in ("1", "2") else OPERATIONS_V3


def decomposition_schema(max_subtasks: int, text_chars: int = DEFAULT_TEXT_CHARS) -> type[BaseModel]:
    return create_model(
        "Decomposition",
        __base__=_Answer,
        reason=(_bounded(text_chars, 400), ...),
        subtasks=(list[_bounded(text_chars, 300, 1)], Field(min_length=1, max_length=max(1, max_subtasks),
                                    description="ordered, self-contained edit sub-tasks")),
        query_objects=(list[_bounded(text_chars, 40, 1)], Field(default_factory=list, max_length=QUERY_OBJECTS_MAX,
                                                               description=QUERY_OBJECTS_DESCRIPTION)),
    )


def reason_schema(ids: list[int], width: int, height: int, text_chars: int = DEFAULT_TEXT_CHARS,
                  operations: tuple[str, ...] = OPERATIONS) -> type[BaseModel]:
    """The final answer for one sub-task, with ids restricted to ``ids``.

    One of several object shapes (a JSON-schema ``anyOf``), so that every answer the grammar lets a
    model write is also a consistent edit step: ``no_target`` with a reason; ``remove`` with at
    least one target; ``replace`` / ``recolor`` with targets and a non-empty inpainter prompt;
    ``add`` with a prompt and a placement (anchored on an existing id, or a box). With no objects in
    the SSR only ``no_target`` and ``add`` in a box remain.

    With ``operations`` = :data:`OPERATIONS_V3` (prompt set 3): ``recolor`` names its ``color`` from
    the colour table; ``move`` takes targets and a placement (where the object goes); ``resize``
    targets, a ``scale`` and an ``anchor``; ``transform`` targets and an instruction applied inside
    their region; ``global`` an instruction for the whole image (no targets, so it remains with no
    objects too). Every shape writes ``reason`` first."""
    ids = sorted(ids)
    v3 = "move" in operations
    side = max(width, height)
    Coord = Annotated[int, Field(ge=0, le=side)]
    Fraction = Annotated[float, Field(ge=0.05, le=1.0)]
    Prompt = _bounded(text_chars, 400, 1)
    Text = _bounded(text_chars, 400)  # noqa: F841 - the annotations below resolve it from this frame

    class NoTarget(_Answer):
        reason: Text
        status: Literal["no_target"]

    class BoxPlacement(_Answer):
        relation: Literal["box"]
        box: Annotated[list[Coord], Field(min_length=4, max_length=4)]
        size_fraction: Fraction = 0.25

    variants: list[Any] = [NoTarget]
    placements: list[Any] = [BoxPlacement]
    if ids:
        Id: Any = Literal[tuple(ids)]  # type: ignore[valid-type]
        Targets = Annotated[list[Id], Field(min_length=1, max_length=len(ids))]

        class AnchorPlacement(_Answer):
            relation: Literal[RELATIONS[:-1]]  # type: ignore[valid-type]
            object_id: Id
            size_fraction: Fraction = 0.25

        class Remove(_Answer):
            reason: Text
            status: Literal["ok"]
            operation: Literal["remove"]
            target_ids: Targets
            prompt: Text = ""

        class Change(_Answer):
            reason: Text
            status: Literal["ok"]
            operation: Literal[("replace",) if v3 else ("replace", "recolor")]  # type: ignore[valid-type]
            target_ids: Targets
            prompt: Prompt

        variants += [Remove, Change]
        placements.insert(0, AnchorPlacement)
        if v3:
            from cielr_core.editing.color import color_names

            class Recolor(_Answer):
                reason: Text
                status: Literal["ok"]
                operation: Literal["recolor"]
                target_ids: Targets
                color: Literal[tuple(color_names())]  # type: ignore[valid-type]
                prompt: Prompt

            class Move(_Answer):
                reason: Text
                status: Literal["ok"]
                operation: Literal["move"]
                target_ids: Targets
                placement: Union[tuple(placements)]  # type: ignore[valid-type]  # noqa: UP007 - a runtime tuple

            class Resize(_Answer):
                reason: Text
                status: Literal["ok"]
                operation: Literal["resize"]
                target_ids: Targets
                scale: Annotated[float, Field(ge=0.1, le=4.0, description="factor on the object's size")]
                anchor: Literal[ANCHORS] = "center"  # type: ignore[valid-type]

            class Transform(_Answer):
                reason: Text
                status: Literal["ok"]
                operation: Literal["transform"]
                target_ids: Targets
                prompt: Prompt

            variants += [Recolor, Move, Resize, Transform]

    class Add(_Answer):
        reason: Text
        status: Literal["ok"]
        operation: Literal["add"]
        prompt: Prompt
        placement: Union[tuple(placements)]  # type: ignore[valid-type]  # noqa: UP007 - a runtime tuple

    variants.append(Add)
    tags: dict[Any, str] = {NoTarget: "no_target", Add: "add"}
    if ids:
        tags.update({Remove: "remove", Change: "change"})
        if v3:
            tags.update({Recolor: "recolor", Move: "move", Resize: "resize", Transform: "transform"})
    if v3:
        class Global(_Answer):
            reason: Text
            status: Literal["ok"]
            operation: Literal["global"]
            prompt: Prompt

        variants.append(Global)
        tags[Global] = "global"
    available = {tags[v] for v in variants}
    shape_of = {"remove": "remove", "replace": "change", "recolor": "recolor" if v3 else "change", "add": "add",
                "move": "move", "resize": "resize", "transform": "transform", "global": "global"}

    def kind(v: Any) -> str | None:
        # picks the one shape an answer claims to be, so a validation error names only its problems
        status = v.get("status") if isinstance(v, dict) else getattr(v, "status", None)
        op = v.get("operation") if isinstance(v, dict) else getattr(v, "operation", None)
        if status == "no_target":
            return "no_target"
        if status == "ok":
            k = shape_of.get(op)
            return k if k in available else None
        return None

    ops = ("add" if not ids else "remove, replace, recolor or add") if not v3 else (
        "add or global" if not ids else "remove, replace, recolor, add, move, resize, transform or global")
    shape = Annotated[
        Union[tuple(Annotated[v, Tag(tags[v])] for v in variants)],  # type: ignore[misc]  # noqa: UP007
        Discriminator(kind, custom_error_type="answer_shape", custom_error_message=(
            f"status must be 'no_target' (with a reason), or 'ok' with an operation: {ops}")),
    ]
    return type("ReasonAnswer", (RootModel[shape],), {})  # type: ignore[valid-type]


def answer_fields(parsed: BaseModel) -> BaseModel:
    """The answer object inside a root-model answer (or the answer itself)."""
    return getattr(parsed, "root", parsed)

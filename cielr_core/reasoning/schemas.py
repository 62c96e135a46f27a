"""The answer schemas of the reasoning calls.

Every LLM call declares one of these; backends constrain decoding to its JSON schema and the
answer is validated with pydantic. Object ids are a ``Literal`` of the ids present in the SSR the
question is about (a JSON-schema ``enum``), so a model cannot name an object that does not exist;
an answer that does anyway (an endpoint that ignores the schema) fails validation and is re-asked.
Strings are bounded; numbers are bounded so that constrained decoding always terminates.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, create_model

Text = Annotated[str, Field(max_length=400)]
SubTask = Annotated[str, Field(min_length=1, max_length=300)]
Label = Annotated[str, Field(min_length=1, max_length=40)]
CodeLine = Annotated[str, Field(max_length=160)]


class _Answer(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Decomposition(_Answer):
    subtasks: list[SubTask] = Field(min_length=1, max_length=8, description="ordered, self-contained edit sub-tasks")


class Assessment(_Answer):
    need: Literal["none", "semantic", "spatial"] = Field(
        description="none: the SSR suffices; semantic: labels are missing or wrong; spatial: geometry is missing"
    )
    reason: Text
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


RELATIONS = ("on", "near", "left_of", "right_of", "above", "below", "box")
OPERATIONS = ("remove", "replace", "add", "recolor")


def decomposition_schema(max_subtasks: int) -> type[BaseModel]:
    return create_model(
        "Decomposition",
        __base__=_Answer,
        subtasks=(list[SubTask], Field(min_length=1, max_length=max(1, max_subtasks),
                                    description="ordered, self-contained edit sub-tasks")),
    )


def reason_schema(ids: list[int], width: int, height: int) -> type[BaseModel]:
    """The final answer for one sub-task, with ids restricted to ``ids``."""
    ids = sorted(ids)
    if ids:
        Id: Any = Literal[tuple(ids)]  # type: ignore[valid-type]
        targets = (list[Id], Field(default_factory=list, max_length=len(ids)))
        anchor = (Optional[Id], None)
    else:  # nothing to point at: only `no_target` or an `add` in a box can be valid
        targets = (list[int], Field(default_factory=list, max_length=0))
        anchor = (Optional[None], None)
    side = max(width, height)
    Coord = Annotated[int, Field(ge=0, le=side)]
    placement = create_model(
        "PlacementAnswer",
        __base__=_Answer,
        relation=(Literal[RELATIONS], ...),
        object_id=anchor,
        box=(Optional[Annotated[list[Coord], Field(min_length=4, max_length=4)]], None),
        size_fraction=(Annotated[float, Field(ge=0.05, le=1.0)], 0.25),
    )
    return create_model(
        "ReasonAnswer",
        __base__=_Answer,
        status=(Literal["ok", "no_target"], ...),
        reason=(Text, ...),
        operation=(Optional[Literal[OPERATIONS]], None),
        target_ids=targets,
        prompt=(Text, ""),
        placement=(Optional[placement], None),
    )

"""Errors of the editing stage."""

from __future__ import annotations


class EditingError(ValueError):
    """An edit cannot be carried out as asked (bad input, or a model output that stays unusable).

    A ``ValueError``: retrying the same call cannot help (the orchestration layer does not retry it).
    """

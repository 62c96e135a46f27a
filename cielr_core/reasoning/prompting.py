"""Versioned prompt templates: ``prompts/<name>.v<version>.txt`` (``string.Template``, ``$field``).

``reasoning.prompt_version`` picks the set; it is part of the reasoning config digest, so a new
wording is a new version file (never an edit of an existing one) and invalidates cached traces.
"""

from __future__ import annotations

import functools
import json
import re
from importlib import resources
from string import Template
from typing import Any

PROMPT_NAMES = ("system", "decompose", "assess", "spatial_code", "reason", "retry")
#: prompts a set may have: ``replan`` (set 3 on) re-asks ``reason`` after the edit judge rejected a step
OPTIONAL_PROMPT_NAMES = ("replan",)
_FILE = re.compile(r"^(?P<name>[a-z_]+)\.v(?P<version>[0-9A-Za-z_.-]+)\.txt$")


def available_versions() -> list[str]:
    found: dict[str, set[str]] = {}
    for entry in resources.files("cielr_core.reasoning").joinpath("prompts").iterdir():
        m = _FILE.match(entry.name)
        if m:
            found.setdefault(m["version"], set()).add(m["name"])
    return sorted(v for v, names in found.items() if set(PROMPT_NAMES) <= names)


@functools.lru_cache(maxsize=8)
def load_prompts(version: str) -> dict[str, Template]:
    base = resources.files("cielr_core.reasoning").joinpath("prompts")
    out = {}
    for name in PROMPT_NAMES:
        f = base.joinpath(f"{name}.v{version}.txt")
        if not f.is_file():
            raise ValueError(
                f"prompt version {version!r} is incomplete or unknown (no {name}.v{version}.txt); "
                f"available: {', '.join(available_versions()) or 'none'}"
            )
        out[name] = Template(f.read_text(encoding="utf-8").strip())
    for name in OPTIONAL_PROMPT_NAMES:  # present from some version on
        f = base.joinpath(f"{name}.v{version}.txt")
        if f.is_file():
            out[name] = Template(f.read_text(encoding="utf-8").strip())
    return out


class Prompts:
    def __init__(self, version: str):
        self.version = version
        self.templates = load_prompts(version)

    def render(self, name: str, **fields: Any) -> str:
        return self.templates[name].substitute(**{k: _text(v) for k, v in fields.items()})

    def messages(self, name: str, **fields: Any) -> list[dict[str, str]]:
        return [{"role": "system", "content": self.render("system")},
                {"role": "user", "content": self.render(name, **fields)}]


def _text(v: Any) -> str:
    if isinstance(v, str):
        return v
    return json.dumps(v, ensure_ascii=False, separators=(",", ":"))

"""Built-in spatial relations (moved to :mod:`cielr_core.relations`, which perception uses too)."""

from cielr_core.relations import (  # noqa: F401 - re-exported
    BUILTIN_KEYS,
    BUILTIN_RELATIONS_VERSION,
    CONTAIN_FRACTION,
    builtin_disagreements,
    builtin_relations,
    has_builtin,
    next_version,
    refresh_builtin,
    strip_builtin,
    with_attributes,
)

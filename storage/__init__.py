"""fsspec-backed artifact store: URIs in, bytes/JSON/PNG/arrays out, atomic writes, validated keys."""

from storage.canonical import canonical_json, sha256_bytes, sha256_json
from storage.keys import KeyError_, validate_key
from storage.store import ArtifactStore, StoreError

__all__ = [
    "ArtifactStore",
    "StoreError",
    "KeyError_",
    "canonical_json",
    "sha256_bytes",
    "sha256_json",
    "validate_key",
]

"""The artifact store: fsspec-backed (a local directory or S3 through s3fs), URIs in, bytes / canonical
JSON / PNG images / 1-bit PNG masks / numpy arrays / Parquet tables out, atomic writes, validated keys.

Layering: storage owns WHERE bytes go and how they travel (atomic writes, S3 credentials, transient
vs permanent failures). It imports cielr_core only for the shared codecs (cielr_core.images /
cielr_core.masks), canonical JSON and key rules (cielr_core.canonical); never prefect, tasks or flows.
WHICH key an artifact has is decided above it, in tasks/keys.py.
"""

from cielr_core.canonical import KeyError_, canonical_json, sha256_bytes, sha256_json, validate_key
from storage.store import ArtifactExists, ArtifactNotFound, ArtifactStore, StoreError

__all__ = [
    "ArtifactExists",
    "ArtifactNotFound",
    "ArtifactStore",
    "KeyError_",
    "StoreError",
    "canonical_json",
    "sha256_bytes",
    "sha256_json",
    "validate_key",
]

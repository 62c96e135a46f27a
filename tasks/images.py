"""Load an image: read bytes from a URI, decode and normalise, content-hash, store as PNG."""

from __future__ import annotations

from typing import Any

import fsspec
import numpy as np
from prefect import task

from cielr_core.config import Settings
from cielr_core.files import UnreadableFileError, read_regular_file
from cielr_core.images import BadImageError, decode_image, encode_png, image_digest
from tasks import keys, runtime
from tasks.refs import ImageRef

DECODE_CODE_VERSION = "1"


def storage_options_for(uri: str, s: Settings) -> dict[str, Any]:
    if uri.startswith(("s3://", "s3a://")):
        cfg = runtime.store_config(s)  # store.credentials_block's values where the settings have none
        opts: dict[str, Any] = {}
        if cfg.endpoint_url:
            opts["endpoint_url"] = cfg.endpoint_url
        if cfg.key is not None:
            opts["key"] = cfg.key.get_secret_value()
        if cfg.secret is not None:
            opts["secret"] = cfg.secret.get_secret_value()
        return opts
    return {}


def _local_path(uri: str) -> str | None:
    if uri.startswith("file://"):
        return uri[len("file://"):]
    return None if "://" in uri else uri


def read_uri(uri: str, s: Settings, *, max_bytes: int | None = None) -> bytes:
    """Bytes of a local path or URL (s3:// uses the store's endpoint and credentials). A local path
    must be a regular file (no FIFO, device or directory is opened) of at most ``max_bytes``."""
    limit = max_bytes if max_bytes is not None else s.limits.max_image_bytes
    local = _local_path(uri)
    if local is not None:
        try:
            return read_regular_file(local, max_bytes=limit)
        except UnreadableFileError as e:
            raise BadImageError(str(e)) from e
    try:
        with fsspec.open(uri, "rb", **storage_options_for(uri, s)) as f:
            data = f.read(limit + 1)
    except FileNotFoundError as e:
        raise BadImageError(f"{uri}: no such file") from e
    except IsADirectoryError as e:
        raise BadImageError(f"{uri}: is a directory, not an image") from e
    if len(data) > limit:
        raise BadImageError(f"{uri}: larger than the {limit}-byte limit (limits.max_image_bytes)")
    return data


def put_rgb(rgb: np.ndarray, s: Settings) -> ImageRef:
    """Store a decoded RGB array under its content digest; return its reference."""
    sha = image_digest(rgb)
    key = keys.image_key(sha)
    st = runtime.store(s)
    if not st.exists(key):
        st.put_bytes(key, encode_png(rgb))
    return ImageRef(sha=sha, key=key, width=int(rgb.shape[1]), height=int(rgb.shape[0]))


def get_rgb(image: ImageRef, s: Settings) -> np.ndarray:
    return runtime.store(s).get_png(image.key)


@task(name="load-image")
def load_image(image_uri: str, settings: runtime.SettingsRef) -> ImageRef:
    """Decode (orientation applied, colour normalised, size-limited) and store; returns the image ref."""
    s = runtime.settings(settings)
    data = read_uri(image_uri, s)
    try:
        rgb = decode_image(data, max_pixels=s.limits.max_image_pixels, max_bytes=s.limits.max_image_bytes,
                           min_side=s.limits.min_image_side, max_aspect=s.limits.max_aspect_ratio)
    except BadImageError as e:
        raise BadImageError(f"{image_uri}: {e}") from e
    return put_rgb(rgb, s)


def load_cache_key(p: dict[str, Any]) -> str:
    """The URI plus what the filesystem says identifies its current content (size, mtime / ETag), plus
    the decoding limits: a changed file is decoded again, an unchanged one is a cache hit."""
    s = runtime.settings(p["settings"])
    uri = p["image_uri"]
    try:
        fs, path = fsspec.core.url_to_fs(uri, **storage_options_for(uri, s))
        info = fs.info(path)
    except Exception:  # noqa: BLE001 - unreadable: let the task itself report it, uncached
        return keys.uncacheable_key("load")
    ident = {k: str(info[k]) for k in ("size", "mtime", "ETag", "etag", "LastModified", "last_modified") if k in info}
    return keys.load_cache_key(uri, ident, s, DECODE_CODE_VERSION)

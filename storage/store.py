"""The artifact store: one class over fsspec for a local directory or S3 (through s3fs).

* A plain path or ``file://`` URL is a local store (default ``./cielr-data``); writes go to a
  temporary file in the same directory and are renamed into place, so a reader never sees half an
  object.
* ``s3://bucket/prefix`` goes through s3fs; every object is written with a single PUT (or a
  multipart upload that only appears on completion), which S3 makes visible atomically. The
  endpoint URL and credentials come from config/env, so MinIO, Ceph and moto work.

Errors name the store URL (never credentials) and the cause.
"""

from __future__ import annotations

import errno
import io
import json
import os
import tempfile
import uuid
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import fsspec
import numpy as np

from cielr_core.canonical import canonical_json, sha256_bytes, validate_key
from cielr_core.images import decode_png, encode_png
from cielr_core.masks import decode_mask_png, encode_mask_png


class StoreError(RuntimeError):
    """A store operation failed. ``transient`` says whether a retry may help."""

    def __init__(self, message: str, *, transient: bool = False):
        super().__init__(message)
        self.transient = transient


class ArtifactNotFound(StoreError):
    pass


class ArtifactExists(StoreError):
    pass


def redact_url(url: str | None) -> str:
    """A URL with any user:password part removed."""
    if not url:
        return ""
    parts = urlsplit(url)
    if parts.username or parts.password:
        host = parts.hostname or ""
        if parts.port:
            host = f"{host}:{parts.port}"
        parts = parts._replace(netloc=host)
    return urlunsplit(parts)


def _secret(value: Any) -> str | None:
    if value is None:
        return None
    get = getattr(value, "get_secret_value", None)
    return get() if get else str(value)


_TRANSIENT_NAMES = (
    "EndpointConnectionError",
    "ConnectTimeoutError",
    "ReadTimeoutError",
    "ClientConnectorError",
    "ServerDisconnectedError",
    "ConnectionError",
    "TimeoutError",
    "SlowDown",
    "ServiceUnavailable",
    "InternalError",
)


def _is_transient(exc: BaseException) -> bool:
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        name = type(exc).__name__
        if any(n in name for n in _TRANSIENT_NAMES) or isinstance(exc, (ConnectionError, TimeoutError)):
            return True
        if isinstance(exc, OSError) and exc.errno in (errno.EBUSY, errno.EAGAIN):  # s3fs: SlowDown, throttling
            return True
        text = str(exc)
        if any(n in text for n in ("SlowDown", "ServiceUnavailable", "503", "500 Internal")):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def _umask() -> int:
    """The process umask, read without changing it where the OS allows (``os.umask`` sets it, which
    is a race with other threads creating files)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


class ArtifactStore:
    """Bytes, canonical JSON, PNG images, 1-bit PNG masks, numpy arrays and Parquet tables under string keys."""

    def __init__(
        self,
        url: str = "./cielr-data",
        *,
        endpoint_url: str | None = None,
        key: Any = None,
        secret: Any = None,
        region: str | None = None,
        anon: bool = False,
    ):
        self.url = url
        self.endpoint_url = endpoint_url
        scheme = urlsplit(url).scheme if "://" in url else ""
        if scheme in ("", "file", "local"):
            path = url.split("://", 1)[1] if "://" in url else url
            self.protocol = "file"
            self.root = os.path.abspath(os.path.expanduser(path))
            self.fs = fsspec.filesystem("file")
        elif scheme in ("s3", "s3a"):
            try:
                import s3fs  # noqa: F401
            except ImportError as e:  # pragma: no cover - s3fs is a dependency
                raise StoreError(f"store {url}: s3fs is not installed ({e})") from e
            bucket_path = url.split("://", 1)[1].strip("/")
            if not bucket_path:
                raise StoreError(f"store {url}: no bucket in the URL (expected s3://bucket[/prefix])")
            self.protocol = "s3"
            self.root = bucket_path
            client_kwargs: dict[str, Any] = {}
            if region:
                client_kwargs["region_name"] = region
            self.fs = fsspec.filesystem(
                "s3",
                key=_secret(key),
                secret=_secret(secret),
                endpoint_url=endpoint_url,
                anon=anon,
                client_kwargs=client_kwargs,
                config_kwargs={
                    "connect_timeout": 5,
                    "read_timeout": 60,
                    "retries": {"max_attempts": 2, "mode": "standard"},
                },
                skip_instance_cache=True,
            )
            self.fs.retries = 2
        else:
            raise StoreError(f"store {url}: unsupported scheme {scheme!r} (use a path, file:// or s3://)")

    # -- construction ---------------------------------------------------------------------------
    @classmethod
    def from_config(cls, cfg: Any) -> ArtifactStore:
        """From a ``StoreConfig`` (or anything with the same attributes)."""
        return cls(
            cfg.url,
            endpoint_url=getattr(cfg, "endpoint_url", None),
            key=getattr(cfg, "key", None),
            secret=getattr(cfg, "secret", None),
            region=getattr(cfg, "region", None),
            anon=getattr(cfg, "anon", False),
        )

    def __repr__(self) -> str:
        return f"ArtifactStore({self.display_url!r})"

    @property
    def display_url(self) -> str:
        base = self.url if self.protocol == "s3" else self.root
        if self.protocol == "s3" and self.endpoint_url:
            return f"{base} (endpoint {redact_url(self.endpoint_url)})"
        return base

    # -- paths ------------------------------------------------------------------------------------
    def _path(self, key: str) -> str:
        validate_key(key)
        return f"{self.root}/{key}"

    def uri_for(self, key: str) -> str:
        """Where an object lives: an absolute path for a local store, s3://bucket/... for S3."""
        path = self._path(key)
        return f"s3://{path}" if self.protocol == "s3" else path

    def key_for(self, uri: str) -> str:
        """Inverse of :meth:`uri_for`: the key of a URI inside this store."""
        base = (f"s3://{self.root}" if self.protocol == "s3" else self.root).rstrip("/") + "/"
        if not uri.startswith(base):
            raise StoreError(f"store {self.display_url}: {uri!r} is not inside this store")
        return validate_key(uri[len(base):])

    def _fail(self, op: str, key: str | None, exc: BaseException) -> StoreError:
        what = f"{op} {key!r}" if key is not None else op
        cause = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        # never leak credentials that a library put into a message
        for s in (_secret(getattr(self.fs, "key", None)), _secret(getattr(self.fs, "secret", None))):
            if s:
                cause = cause.replace(s, "***")
        if isinstance(exc, FileNotFoundError):
            return ArtifactNotFound(f"store {self.display_url}: {what}: no such object")
        transient = _is_transient(exc)
        hint = ""
        if transient and self.protocol == "s3":
            hint = " (transient: still failing after the S3 client's own retries)"
        return StoreError(f"store {self.display_url}: {what} failed: {cause}{hint}", transient=transient)

    # -- health -----------------------------------------------------------------------------------
    def check(self, *, create: bool = True) -> None:
        """Raise StoreError unless the store is reachable (and, locally, writable)."""
        try:
            if self.protocol == "file":
                if create:
                    os.makedirs(self.root, exist_ok=True)
                if not os.path.isdir(self.root):
                    raise FileNotFoundError(self.root)
                if not os.access(self.root, os.W_OK):
                    raise PermissionError(f"{self.root} is not writable")
            else:
                bucket = self.root.split("/", 1)[0]
                self.fs.invalidate_cache()
                self.fs.ls(bucket, refresh=True)
        except StoreError:
            raise
        except Exception as e:
            raise self._fail("check", None, e) from e

    # -- bytes ------------------------------------------------------------------------------------
    def put_bytes(self, key: str, data: bytes, *, overwrite: bool = True) -> str:
        """Write ``data`` atomically under ``key``; return its sha256."""
        path = self._path(key)
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"put_bytes needs bytes, got {type(data).__name__}")
        data = bytes(data)
        if not overwrite and self.exists(key):
            raise ArtifactExists(f"store {self.display_url}: {key!r} exists and overwrite=False")
        try:
            if self.protocol == "file":
                directory = os.path.dirname(path)
                os.makedirs(directory, exist_ok=True)
                fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=f"-{uuid.uuid4().hex[:8]}", dir=directory)
                try:
                    os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; a store file is as open() would make it
                    with os.fdopen(fd, "wb") as f:
                        f.write(data)
                        f.flush()
                        os.fsync(f.fileno())
                    os.replace(tmp, path)
                except BaseException:
                    try:
                        os.unlink(tmp)
                    except FileNotFoundError:
                        pass
                    raise
            else:
                self.fs.pipe_file(path, data)
                self.fs.invalidate_cache(path)
        except StoreError:
            raise
        except Exception as e:
            raise self._fail("write", key, e) from e
        return sha256_bytes(data)

    def get_bytes(self, key: str) -> bytes:
        path = self._path(key)
        try:
            return self.fs.cat_file(path)
        except Exception as e:
            raise self._fail("read", key, e) from e

    def exists(self, key: str) -> bool:
        path = self._path(key)
        try:
            if self.protocol == "s3":
                self.fs.invalidate_cache(path)
            return bool(self.fs.isfile(path))
        except Exception as e:
            raise self._fail("exists", key, e) from e

    def delete(self, key: str) -> None:
        path = self._path(key)
        try:
            self.fs.rm_file(path)
        except FileNotFoundError:
            return
        except Exception as e:
            raise self._fail("delete", key, e) from e

    def list(self, prefix: str = "") -> list[str]:
        """Keys under ``prefix`` (recursive), sorted, relative to the store root."""
        if prefix:
            validate_key(prefix.rstrip("/"))
        base = f"{self.root}/{prefix.rstrip('/')}" if prefix else self.root
        try:
            if self.protocol == "s3":
                self.fs.invalidate_cache()
            if not self.fs.exists(base):
                return []
            found: Iterable[str] = self.fs.find(base)
        except Exception as e:
            raise self._fail("list", prefix or "/", e) from e
        root = self.root.rstrip("/") + "/"
        keys = []
        for p in found:
            p = p.removeprefix("s3://")
            if not p.startswith(root):
                continue
            rel = p[len(root):]
            if any(seg.startswith(".tmp-") for seg in rel.split("/")):
                continue
            keys.append(rel)
        return sorted(keys)

    def sha256(self, key: str) -> str:
        return sha256_bytes(self.get_bytes(key))

    # -- JSON -------------------------------------------------------------------------------------
    def put_json(self, key: str, value: Any, *, overwrite: bool = True) -> str:
        """Write canonical JSON; equal content gives equal bytes and digest (returned)."""
        return self.put_bytes(key, canonical_json(value), overwrite=overwrite)

    def get_json(self, key: str) -> Any:
        data = self.get_bytes(key)
        try:
            return json.loads(data)
        except ValueError as e:
            raise StoreError(f"store {self.display_url}: {key!r} is not valid JSON: {e}") from e

    # -- images, masks, arrays --------------------------------------------------------------------
    def put_png(self, key: str, image: Any, *, overwrite: bool = True) -> str:
        """Write an image (PIL image or uint8 HxW / HxWx3 / HxWx4 array) as PNG."""
        return self.put_bytes(key, encode_png(image), overwrite=overwrite)

    def get_png(self, key: str) -> np.ndarray:
        data = self.get_bytes(key)
        try:
            return decode_png(data)
        except Exception as e:
            raise StoreError(f"store {self.display_url}: {key!r} is not a readable image: {e}") from e

    def put_mask(self, key: str, mask: np.ndarray, *, overwrite: bool = True) -> str:
        """Write a binary mask as a 1-bit PNG."""
        return self.put_bytes(key, encode_mask_png(mask), overwrite=overwrite)

    def get_mask(self, key: str) -> np.ndarray:
        return decode_mask_png(self.get_bytes(key))

    def put_array(self, key: str, array: np.ndarray, *, overwrite: bool = True) -> str:
        buf = io.BytesIO()
        np.save(buf, np.asarray(array), allow_pickle=False)
        return self.put_bytes(key, buf.getvalue(), overwrite=overwrite)

    def get_array(self, key: str) -> np.ndarray:
        data = self.get_bytes(key)
        try:
            return np.load(io.BytesIO(data), allow_pickle=False)
        except Exception as e:
            raise StoreError(f"store {self.display_url}: {key!r} is not a numpy array: {e}") from e

    # -- tables -----------------------------------------------------------------------------------
    def put_table(self, key: str, table: Any, *, overwrite: bool = True) -> str:
        """Write a pyarrow Table as Parquet."""
        import pyarrow.parquet as pq

        buf = io.BytesIO()
        pq.write_table(table, buf)
        return self.put_bytes(key, buf.getvalue(), overwrite=overwrite)

    def get_table(self, key: str) -> Any:
        """A Parquet object as a pyarrow Table."""
        import pyarrow.parquet as pq

        data = self.get_bytes(key)
        try:
            return pq.read_table(io.BytesIO(data))
        except Exception as e:
            raise StoreError(f"store {self.display_url}: {key!r} is not a readable Parquet table: {e}") from e

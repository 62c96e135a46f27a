"""One lock per accelerator device, so the images in flight in one process share a GPU safely.

Several threads (images in flight, batchers) may reach the same GPU at once; each forward pass
takes :func:`device_lock` for its device, so only one runs on a GPU at a time and activations of
two passes never sit in its memory together. Take it around one forward (a batcher around its one
batched forward), never around a wait for other callers. CPU devices get no lock: CPU kernels are
already pinned to ``orchestration.torch_threads`` per call and threads may share the cores.

Across processes (two flow runs on one worker machine) the GPU is guarded by the Prefect global
concurrency limit each dataset chunk holds a slot of (tasks.gpu.gpu_slot), not here.
"""

from __future__ import annotations

import threading
from contextlib import AbstractContextManager, nullcontext
from typing import Any

_guard = threading.Lock()

# TorchScript compilation (torch.jit.script: SAM2's transforms, built with every SAM2 predictor or
# mask generator) is not thread-safe: two images in flight scripting at once fail with "Can't
# redefine method", a KeyError on '__torch__...interpolate' or a mangled-type mismatch. Every
# construction that scripts holds this one process-wide lock.
script_lock = threading.Lock()
_locks: dict[str, threading.RLock] = {}


def _device_name(device: Any) -> str:
    name = str(device)
    if name == "cuda":
        try:
            import torch

            return f"cuda:{torch.cuda.current_device()}" if torch.cuda.is_available() else name
        except Exception:  # noqa: BLE001 - no torch / no CUDA: the plain name is key enough
            return name
    return name


def device_lock(device: Any) -> AbstractContextManager[Any]:
    """The process-wide lock of ``device`` (reentrant, so a forward that calls another model on the same
    device in the same thread does not deadlock); a no-op context for CPU devices."""
    name = _device_name(device)
    if name == "cpu" or name.startswith("cpu:"):
        return nullcontext()
    with _guard:
        lock = _locks.get(name)
        if lock is None:
            lock = _locks[name] = threading.RLock()
    return lock

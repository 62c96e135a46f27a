"""GPU exclusivity across processes, paid once per chunk.

A dataset chunk holds one slot of a Prefect *global* concurrency limit, named
``orchestration.gpu_tag`` (``gpu:<pool>`` in the deployments; `cielr deploy` creates it with
``--gpu-limit`` slots), for as long as it runs. So two flow runs on one worker (a nightly and an
evaluation, say) never share its GPU, while the images in flight inside the chunk share it
through the in-process device lock (cielr_core.devices). Stage tasks carry no tag: a tag with a
concurrency limit costs a slot acquisition per task run (1.3-1.8 s each through a real server),
a chunk slot costs one acquisition per chunk (figures: docs/benchmarks.md, "GPU slot").

Where no limit of that name exists (local runs on the ephemeral API), the chunk runs unguarded
after one cheap API call.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from cielr_core.config import Settings

# The lease is renewed in the background while the chunk runs; if the process dies, the server
# frees the slot when the lease runs out.
LEASE_S = 300.0


@contextmanager
def gpu_slot(settings: Settings) -> Iterator[None]:
    """Hold one slot of the global concurrency limit ``settings.orchestration.gpu_tag`` for the block
    (waiting for one while another holder has them all); a no-op when the name is empty."""
    name = settings.orchestration.gpu_tag
    if not name:
        yield
        return
    kwargs: dict[str, Any] = {"occupy": 1, "lease_duration": LEASE_S, "raise_on_lease_renewal_failure": False}
    try:  # the form Prefect's own task engine uses: a missing limit is a debug line, not a warning per chunk
        from prefect.concurrency._sync import concurrency

        kwargs["suppress_warnings"] = True
    except ImportError:  # pragma: no cover - another Prefect layout
        from prefect.concurrency.sync import concurrency
    from prefect.client.schemas.objects import ConcurrencyLeaseHolder
    from prefect.context import FlowRunContext

    ctx = FlowRunContext.get()
    if ctx is not None and ctx.flow_run is not None:
        kwargs["holder"] = ConcurrencyLeaseHolder(type="flow_run", id=ctx.flow_run.id)
    with concurrency(name, **kwargs):
        yield

"""Prefect flows: the paper's Figure 1 as orchestration.

* pipeline.py  -- one image through the DAG (load, perceive, decompose, per sub-task reason and
  inpaint, finalize), as calls of the bound stage tasks; failures become result rows.
* edit_image.py -- the `edit-image` flow: one image.
* edit_dataset.py -- the `edit-dataset` flow: a manifest in chunk subflows, optionally on Dask,
  into runs/<run id>/results.parquet.
* evaluate.py -- the `evaluate` flow: a benchmark through edit_dataset, then per-sample metrics
  and a report.

Layering: flows own the order of the stages and the run as a whole (chunks, runners, Prefect
artifacts). They may import tasks (stage tasks, keys, refs, runtime), storage and cielr_core;
never the command line (cli/), which sits beside them. Settings are resolved once per flow run.
"""

from flows.ephemeral_server import install as _die_with_parent

_die_with_parent()  # Prefect's temporary API server, if this process starts one, dies with it

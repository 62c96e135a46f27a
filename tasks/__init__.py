"""Prefect tasks around cielr_core: what each stage reads and writes, and how it is run.

* keys.py -- the one owner of the store's layout: every prefix, artifact key and cache key.
* refs.py -- the typed references tasks hand each other, and the result row (results.parquet).
* runtime.py -- per-process state: the settings reference resolved by digest, stores, resident
  models; result storage for Prefect on the artifact store.
* options.py -- run options of every stage (cache keys, retries on transient errors only,
  timeouts, GPU tag) and the one way to read a task run's final state.
* stages.py -- the stage tasks bound to one run's settings, the per-stage recorder, the
  worker task of one image.
* images / perception / reasoning / editing / output / evaluation / manifest -- the tasks of each
  stage (and the reading of manifests).

Layering: tasks own I/O and orchestration options for one stage at a time. They may import
storage and cielr_core (and prefect); never flows or the command line. cielr_core does the work;
a task reads its inputs from the store by reference, calls it, writes its outputs under the key
module's keys and returns a reference.
"""

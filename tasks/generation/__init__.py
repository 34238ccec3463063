"""Generation wing: the pieces of the generate stage (tasks/generate.py keeps run() and its steps).

Owns the plan (plan.py), the image filters (filters.py), sampling with the pipeline (sampling.py), shard writing
and resume (shards.py), the engines that run shards (engines.py: local, Dask, accelerate processes) and the grids
(pictures.py). May import core modules (tasks.io, tasks.params, tasks.stage, ...), the diffusion wing
(tasks.diffusion) and its own modules; never a stage module.
"""



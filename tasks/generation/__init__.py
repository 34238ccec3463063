"""Generation wing: the pieces of the generate stage (tasks/generate.py keeps run() and its steps).

Owns the plan (plan.py), the image filters (filters.py) and top-up rounds replacing what they drop (topup.py),
sampling with the pipeline (sampling.py), shard writing and resume (shards.py), the engines that run shards (engines.py: local, Dask, accelerate processes) and the grids
(pictures.py); and predict's checks of a generated set against the real train images: the per-class quality
gate (quality.py) and the memorisation check (memorisation.py). May import core modules (tasks.io, tasks.params,
tasks.stage, ...), the diffusion wing (tasks.diffusion), the intake wing's pHash (tasks.intake.decode) and its own
modules; never a stage module.
"""



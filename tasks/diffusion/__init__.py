"""Diffusion wing: Stable Diffusion plumbing shared by pretrain, dreambooth and generate.

Owns the tiny model, pipeline load/save/hash/schedulers, prompt encoding, the shared training idioms and the
pieces of DreamBooth fine-tuning (data, checkpoints, previews, the trainer). May import core modules
(tasks.io, tasks.params, tasks.stage, tasks.tracking, ...) and its own modules; never a stage module.
"""

"""Intake wing: the pieces of the ``ingest`` stage (tasks/ingest.py keeps ``run`` and its steps).

discover (records found on disk, path safety), decode (file bytes → normalised image, pixel and perceptual
hashes), dedupe (exact and near duplicates, groups), split (stratified group split). Modules here may import
each other (discover is the base: ``BadImage``, ``Record``) and the core modules (tasks.io, tasks.params,
tasks.stage, ...), never a stage module.
"""

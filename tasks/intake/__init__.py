"""Intake wing: the pieces of the ``ingest`` stage (tasks/ingest.py keeps ``run`` and its steps).

walk (every entry under the data root classified by lstat before anything opens it; safe reads; DVC hazards),
discover (records and quarantine rows, metadata.csv, path safety), decode (file bytes → normalised image, pixel
and perceptual hashes), dedupe (exact and near duplicates, groups), split (stratified group split). Modules here
may import each other (walk is the base: ``BadImage``, ``Entry``; discover adds ``Record``, ``IngestError``) and
the core modules (tasks.io, tasks.params, tasks.stage, ...), never a stage module.
"""

"""Sample data sets that stand for *a user's own folder* — not part of the stage pipeline.

Each module writes a folder-per-class tree of images (``python -m tasks.samples.<name> --out <folder>``) that is then
used exactly like a user's data: ``dataset.source: folder`` and ``paths.raw`` pointing at it. Nothing here is
imported by a stage, and nothing here knows about the phantom demo (``tasks/phantom.py``); the point is a data set of
a different nature on which the loop can be tried and measured.

May import only numpy, Pillow and the core module ``tasks.io`` (atomic writes).
"""

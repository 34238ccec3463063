"""The review wing: the human-correction checkpoint, three front-ends over one decision store.

- ``stage`` (the review stage's ``run``; ``python -m tasks.review``), ``queue`` (order, label → decision),
  ``modes`` (automatic reviewers, one table), ``store`` (ReviewStore: the only writer of corrections.csv) and
  ``audit`` (the append-only log);
- front-ends: ``app`` (the web app, with ``templates/`` and ``static/``), ``labelstudio`` (export/import), and
  ``prefect_input`` (the flow's pause/resume form); ``status`` counts progress without pandas;
- ``reference``: the reference labeler, a *simulated* reviewer for the embedded phantom demo only.

May import core modules (tasks.io, params, stage, tables, validation, tracking) and ``tasks.phantom_geometry``
(reference only); never another stage. This ``__init__`` stays empty so the flow can import ``status`` and
``prefect_input`` without pandas.
"""

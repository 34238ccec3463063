"""The evaluation wing: what the evaluate stage computes and shows, apart from its ``run``.

``plan`` (the jobs: arms × repeats × backbones and the curve points, re-drawn splits, fingerprints), ``runner``
(training and scoring each distinct job once, in worker processes), ``stats`` (metrics, intervals, paired
differences, Holm, verdicts), ``curves`` (the two gain curves), ``source`` (who reviewed), ``sets`` (in-memory
evaluation splits, scoring), ``fidelity`` (FID/KID/precision/recall via torch-fidelity), ``checks`` (predict's
quality gate and memorisation counts, as report blocks), ``answer`` (the recommendation and tables in words),
``report`` (report.md / report.html). May import core modules, the classify wing and the intake wing's splitter;
never a stage.
"""

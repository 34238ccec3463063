"""The evaluation wing: what the evaluate stage computes and shows, apart from its ``run``.

``stats`` (metrics, intervals, paired differences, verdicts), ``sets`` (in-memory evaluation splits, scoring),
``fidelity`` (FID/KID/precision/recall via torch-fidelity), ``checks`` (predict's quality gate and memorisation
counts, as report blocks), ``report`` (report.md / report.html). May import
core modules and the classify wing; never a stage.
"""

"""evaluate's job runner: each distinct training once, longest first, rows in plan order."""

from __future__ import annotations

import pandas as pd

from tasks.evaluation import runner
from tasks.evaluation.plan import Job


def _job(name: str, n_real: int, n_synth: int, seed: int = 0) -> Job:
    table = lambda n, kind: pd.DataFrame({"path": [f"{kind}{i}.png" for i in range(n)],  # noqa: E731
                                          "label": ["a"] * n, "weight": 1.0})
    return Job("arms", name, "custom_cnn", 0, seed, table(n_real, "r"), table(4, "v"),
               table(n_synth, "s") if n_synth else None, False, False)


def test_distinct_trainings_run_longest_first_and_rows_keep_the_plan_order(params, monkeypatch):
    ran: list[str] = []

    def fake(p, job, test, cache=None, stage_model=None):
        ran.append(job.name)
        return [{"key": job.key, "split": s, "best_epoch": 1, "epochs_run": 1, "reused_stage_model": False}
                for s in ("val", "test")]

    monkeypatch.setattr(runner, "run_job", fake)
    monkeypatch.setattr(runner, "metric_names", lambda p: ())
    jobs = [_job("real", 64, 0), _job("x1", 64, 64), _job("x4", 64, 256), _job("x2", 64, 128),
            _job("x4", 64, 256)]  # the same training twice: trained once
    one_worker = params.model_copy(update={"evaluate": params.evaluate.model_copy(update={"workers": 1})})
    table = runner.run_jobs(one_worker, jobs, pd.DataFrame(), {}, {})
    assert ran == ["x4", "x2", "x1", "real"]
    assert table[table.split == "test"].arm.tolist() == ["real", "x1", "x4", "x2", "x4"]

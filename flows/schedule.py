"""The scheduled deployment of the loop: ``synthloop serve`` (``flow.serve``) and prefect.yaml (work pools).

Both take name, cron and parameters from ``params.schedule``; a scheduled run applies
``schedule.set_params`` (empty by default: the run keeps ``review.mode`` — the demo's simulated reviewer, or with
``manual`` a pause at the checkpoint for a person; ``["review.mode=accept-confident"]`` reviews nobody).
"""

from __future__ import annotations

from prefect.schedules import Cron

from flows.pipeline import synthloop_loop


def deployment_kwargs(params) -> dict:
    """Arguments shared by ``serve`` and ``to_deployment``: name, cron schedule, parameters."""
    s = params.schedule
    return {
        "name": s.name,
        "schedules": [Cron(s.cron, timezone=s.timezone)],
        "parameters": {"set_params": list(s.set_params)},
        "description": "The synthloop loop on a schedule (see params.yaml `schedule`).",
        "tags": ["synthloop"],
    }


def build_deployment(params):
    """The deployment object (registered by ``serve`` or ``.apply()``)."""
    return synthloop_loop.to_deployment(**deployment_kwargs(params))


def serve_loop(params) -> None:
    """Serve the scheduled deployment from this process until interrupted."""
    synthloop_loop.serve(**deployment_kwargs(params))

"""synthloop stages: one module per stage, each exposing ``run(params, *, <inputs>, out_dir) -> <Stage>Outputs``."""

from tasks import tvguard as _tvguard
from tasks.env import apply_offline_defaults as _apply_offline_defaults

_tvguard.install()
_apply_offline_defaults()

"""Params layers: profiles and overrides reach the stages (and DVC) without rewriting params.yaml."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from conftest import REPO
from tasks import overrides
from tasks.params import ParamsError, load_params


@pytest.fixture
def checkout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A folder with the real params.yaml and configs/ (a checkout as far as params go)."""
    (tmp_path / "configs").mkdir()
    (tmp_path / "params.yaml").write_text((REPO / "params.yaml").read_text())
    (tmp_path / "configs" / "gpu-sd15.yaml").write_text((REPO / "configs" / "gpu-sd15.yaml").read_text())
    monkeypatch.delenv(overrides.RUN_ENV, raising=False)
    return tmp_path


def test_no_layers_reads_params_yaml_as_it_is(checkout: Path):
    assert load_params(checkout / "params.yaml") == load_params(checkout / "params.yaml", layers=False)
    assert overrides.read_layers(checkout).describe() == {}


def test_local_set_and_run_set_apply_in_order_and_params_yaml_is_untouched(checkout: Path,
                                                                           monkeypatch: pytest.MonkeyPatch):
    before = (checkout / "params.yaml").read_bytes()
    overrides.write_local(checkout, set_items=["generate.num_images=12", "review.mode=accept-confident"])
    monkeypatch.setenv(overrides.RUN_ENV, json.dumps(["generate.num_images=20"]))
    params = load_params(checkout / "params.yaml")
    assert params.generate.num_images == 20, "this run's override wins over the checkout's"
    assert params.review.mode == "accept-confident"
    assert (checkout / "params.yaml").read_bytes() == before
    resolved = yaml.safe_load((checkout / overrides.RESOLVED_FILE).read_text())
    assert resolved["generate"]["num_images"] == 12, "written by write_local before the run's env existed"
    overrides.record_resolved(checkout / "params.yaml")
    resolved = yaml.safe_load((checkout / overrides.RESOLVED_FILE).read_text())
    assert resolved["generate"]["num_images"] == 20 and resolved["review"]["mode"] == "accept-confident"
    assert set(resolved) == set(yaml.safe_load(before)), "every key DVC tracks in params.yaml is in the record"


def test_profile_layers_over_params_yaml_but_paths_stay(checkout: Path):
    with pytest.raises(ParamsError, match=r"profile's paths were not applied .* paths.raw: data/raw"):
        overrides.write_local(checkout, profile="gpu-sd15")  # paths.raw still points into the phantom
    assert not (checkout / overrides.LOCAL_FILE).exists(), "the refused layer was not left behind"
    text = (checkout / "params.yaml").read_text().replace("raw: data/phantom/labeled", "raw: data/raw", 1)
    (checkout / "params.yaml").write_text(text)
    (checkout / "data" / "raw" / "a").mkdir(parents=True)
    (checkout / "data" / "raw" / "b").mkdir()
    overrides.write_local(checkout, profile="gpu-sd15")
    params = load_params(checkout / "params.yaml")
    base = load_params(checkout / "params.yaml", layers=False)
    assert params.profile == "gpu-sd15" and params.dreambooth.learning_rate != base.dreambooth.learning_rate
    assert params.paths == base.paths, "dvc.yaml interpolates paths from params.yaml: a profile cannot move them"
    overrides.write_local(checkout, profile="none")
    assert load_params(checkout / "params.yaml") == base


def test_run_overrides_end_with_the_run(checkout: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(checkout)
    with overrides.run_overrides(["review.mode=accept-confident"]):
        assert load_params().review.mode == "accept-confident"
        overrides.record_resolved()
    assert overrides.RUN_ENV not in __import__("os").environ
    resolved = yaml.safe_load((checkout / overrides.RESOLVED_FILE).read_text())
    assert resolved["review"]["mode"] == load_params(layers=False).review.mode, "re-resolved without the run's set"


@pytest.mark.parametrize(("items", "message"), [
    (["paths.raw=/elsewhere"], "paths come from params.yaml only"),
    (["generate.num_images"], "not of the form section.key=value"),
    (["generate.num_images=-3"], "generate.num_images"),
    (["nosuch.key=1"], "nosuch"),
])
def test_bad_local_override_is_refused_and_the_layer_kept(checkout: Path, items: list[str], message: str):
    overrides.write_local(checkout, set_items=["generate.num_images=12"])
    kept = (checkout / overrides.LOCAL_FILE).read_text()
    with pytest.raises(ParamsError, match=message):
        overrides.write_local(checkout, set_items=items)
    assert (checkout / overrides.LOCAL_FILE).read_text() == kept, "an invalid layer never replaces a valid one"


def test_bad_layer_file_names_the_file_and_key(checkout: Path, monkeypatch: pytest.MonkeyPatch):
    (checkout / overrides.LOCAL_FILE).write_text("profil: gpu-sd15\n")
    with pytest.raises(ParamsError, match=r"params.local.yaml: unknown key\(s\) profil"):
        load_params(checkout / "params.yaml")
    (checkout / overrides.LOCAL_FILE).write_text("profile: nosuch\n")
    with pytest.raises(ParamsError, match="profile 'nosuch' not found"):
        load_params(checkout / "params.yaml")
    (checkout / overrides.LOCAL_FILE).unlink()
    monkeypatch.setenv(overrides.RUN_ENV, "review.mode=manual")
    with pytest.raises(ParamsError, match="SYNTHLOOP_SET must be a JSON list"):
        load_params(checkout / "params.yaml")


def test_dvc_tracks_every_stage_params_in_the_resolved_file_too():
    """Each stage's params in dvc.yaml are declared in params.yaml and in params.resolved.yaml, same keys."""
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    for name, stage in stages.items():
        plain = [p for p in stage["params"] if isinstance(p, str)]
        files = [p for p in stage["params"] if isinstance(p, dict)]
        assert files == [{overrides.RESOLVED_FILE: plain}], f"stage {name}: {stage['params']}"


def test_describe_layers_for_the_report(checkout: Path, monkeypatch: pytest.MonkeyPatch):
    assert overrides.describe_layers(checkout) == "params.yaml as it is (no profile, no overrides)"
    overrides.write_local(checkout, set_items=["generate.num_images=12"])
    monkeypatch.setenv(overrides.RUN_ENV, json.dumps(["review.mode=accept-confident"]))
    assert overrides.describe_layers(checkout) == ("params.yaml + kept overrides generate.num_images=12; "
                                                   "this run's overrides review.mode=accept-confident")


def test_committed_resolved_file_is_params_yaml_alone(checkout: Path):
    """A fresh clone's bare `dvc repro` reads params.resolved.yaml before any stage writes it, so the committed copy
    must be exactly what params.yaml alone resolves to (regenerate: `synthloop params --profile none --clear`)."""
    overrides.record_resolved(checkout / "params.yaml")
    expected = (checkout / overrides.RESOLVED_FILE).read_text(encoding="utf-8")
    assert (REPO / overrides.RESOLVED_FILE).read_text(encoding="utf-8") == expected, (
        "params.resolved.yaml is stale: run `synthloop params --profile none --clear` and commit it")

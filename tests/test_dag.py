"""One DAG: dvc.yaml, the params model, stage_inputs and the Prefect flow agree on stages and paths."""

from __future__ import annotations

from pathlib import Path

import yaml

from tasks.params import STAGES, load_params
from tasks.stage import stage_inputs, stage_module

REPO = Path(__file__).resolve().parent.parent


def _dvc_stages() -> dict:
    return yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]


def _interpolate(text: str, params) -> str:
    for key, value in params.paths.model_dump().items():
        text = text.replace("${paths." + key + "}", str(value))
    return text


def test_dvc_stage_list_equals_the_flows():
    from flows.pipeline import synthloop_loop  # noqa: F401 — the flow iterates tasks.params.STAGES
    import flows.pipeline as pipeline

    assert list(_dvc_stages()) == list(STAGES) == list(pipeline.STAGES)


def test_every_stage_has_module_params_section_and_command():
    params = load_params(REPO / "params.yaml")
    for name, stage in _dvc_stages().items():
        assert stage["cmd"] == f"python -m tasks.{name}"
        module = stage_module(name)
        assert (REPO / (module.replace(".", "/") + ".py")).exists(), f"{module} missing"
        assert hasattr(params, name)


def test_stage_inputs_are_declared_as_dvc_deps_and_outputs_as_outs():
    """What run() reads (stage_inputs) must be a dvc dep, or DVC would not re-run the stage when it changes."""
    params = load_params(REPO / "params.yaml")
    for name, stage in _dvc_stages().items():
        deps = {_interpolate(d, params) for d in stage.get("deps", [])}
        for kwarg, path in stage_inputs(params, name).items():
            # A dep on a folder covers what is inside it (pretrain's pool lives in the phantom stage's output).
            covered = any(str(path) == d or str(path).startswith(d + "/") for d in deps)
            assert covered, f"stage {name}: input {kwarg}={path} is not in dvc.yaml deps {sorted(deps)}"
        outs = [_interpolate(o if isinstance(o, str) else next(iter(o)), params) for o in stage.get("outs", [])]
        out_dir = str(getattr(params.paths, name))
        assert outs and all(o == out_dir or o.startswith(out_dir + "/") or o.startswith("reports") for o in outs), \
            f"stage {name} writes outside data/{name}: {outs}"


def test_test_split_is_read_by_evaluate_only():
    params = load_params(REPO / "params.yaml")
    test_dir = str(params.paths.ingest / "test")
    readers = [n for n, s in _dvc_stages().items()
               if any(_interpolate(d, params).startswith(test_dir) for d in s.get("deps", []))]
    assert readers == ["evaluate"]
    assert [n for n in STAGES if any(str(p).startswith(test_dir) for p in stage_inputs(params, n).values())] \
        == ["evaluate"]


def test_dvc_code_deps_are_exactly_the_import_graph():
    """Each stage's code deps in dvc.yaml are the project modules its command imports (regenerate: make deps)."""
    from tasks.codedeps import differences

    assert differences(REPO / "dvc.yaml") == {}, "dvc.yaml code deps disagree with the imports: run `make deps`"


def test_code_deps_follow_an_edit_of_the_import_graph(tmp_path):
    """A new import shows up as a missing dep; `--write` puts it in, keeps the data deps, and is then stable."""
    from tasks import codedeps

    pkg = tmp_path / "tasks"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "io.py").write_text("")
    (pkg / "helper.py").write_text("")
    (pkg / "phantom.py").write_text("from tasks import io\n")
    dvc = tmp_path / "dvc.yaml"
    dvc.write_text("stages:\n  phantom:\n    cmd: python -m tasks.phantom\n"
                   "    deps: [tasks/phantom.py, \"${paths.raw}\"]\n    outs: [x]\n")
    assert codedeps.differences(dvc, tmp_path) == {"phantom": (["tasks/__init__.py", "tasks/io.py"], [])}
    (pkg / "io.py").write_text("def f():\n    from tasks.helper import x\n")
    assert codedeps.rewrite(dvc, tmp_path) == ["phantom"]
    assert codedeps.differences(dvc, tmp_path) == {}
    deps = codedeps.declared(dvc)["phantom"]
    assert "tasks/helper.py" in deps and deps[-1] == "${paths.raw}"
    assert codedeps.rewrite(dvc, tmp_path) == []

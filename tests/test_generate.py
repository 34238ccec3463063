"""generate stage: run end to end: determinism, resume after kills, full disk, Dask, accelerate, GX."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from tasks import generate as G
from tasks.generation import shards
from tasks.io import TEMP_PREFIX, atomic_open, sha256_file
from tasks.stage import StageError
from tasks.validation import ValidationFailed, validate

from conftest import free_port, make_params

CLASSES = ["small", "big"]
PROMPTS = {"classes": CLASSES,
           "instance_prompts": {c: f"photo of zwx {c} hip xray" for c in CLASSES},
           "class_prompt": "photo of a hip xray"}


class _Killed(Exception):
    """Stands in for a kill at a chosen point (nothing after it runs)."""


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A tiny random-weight pipeline folder (32²) and a prompts.json, built once for the module."""
    from tasks.diffusion.pipeline import save_pipeline
    from tasks.diffusion.tiny import build_tiny_pipeline

    root = tmp_path_factory.mktemp("generate-inputs")
    model = save_pipeline(build_tiny_pipeline(32, 0), root / "model")
    prompts = root / "prompts.json"
    prompts.write_text(json.dumps(PROMPTS))
    return model, prompts


def _snapshot(out_dir: Path) -> dict[str, str]:
    return {p.relative_to(out_dir).as_posix(): sha256_file(p) for p in sorted(out_dir.rglob("*")) if p.is_file()}


def _run(params, inputs, out_dir: Path):
    model, prompts = inputs
    return G.run(params, model=model, prompts=prompts, out_dir=out_dir)


@pytest.fixture(scope="module")
def reference(inputs, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Files of one uninterrupted run with the shrunk test params (8 images, 2 shards of one batch of 4)."""
    root = tmp_path_factory.mktemp("generate-reference")
    out = root / "out"
    _run(make_params(root), inputs, out)
    return _snapshot(out)


def test_run_rejects_unreadable_prompts_file(params, inputs, tmp_path):
    bad = tmp_path / "prompts.json"
    bad.write_text("{not json")
    with pytest.raises(StageError, match="not valid JSON"):
        G.run(params, model=inputs[0], prompts=bad, out_dir=tmp_path / "out")


def test_run_writes_manifest_metadata_and_grids(params, inputs, tmp_path, reference):
    out = _run(params, inputs, tmp_path / "out")
    manifest = pd.read_csv(out.manifest, keep_default_na=False)
    assert list(manifest.columns[:10]) == ["file_name", "intended_label", "prompt", "negative_prompt", "seed",
                                           "scheduler", "steps", "guidance", "model_hash", "status"]
    assert len(manifest) == 8 and manifest["intended_label"].value_counts().to_dict() == {"small": 4, "big": 4}
    for f, h in zip(manifest["file_name"], manifest["sha256"]):
        assert sha256_file(tmp_path / "out" / f) == h
    metadata = pd.read_csv(out.metadata)
    assert list(metadata.columns) == ["file_name", "text", "label"]
    assert len(metadata) == (manifest["status"] == "ok").sum()
    assert {p.name for p in out.grids.iterdir()} == {"small.png", "big.png"}
    assert out.metrics["generated"] == 8 and out.metrics["images"] == 8
    assert _snapshot(tmp_path / "out") == reference  # same plan, same machine → same bytes
    again = _run(params, inputs, tmp_path / "out")
    assert again.metrics["generated"] == 0 and again.metrics["reused"] == 8


def test_one_image_regenerated_alone_is_byte_identical(params, inputs, tmp_path, reference):
    out_dir = tmp_path / "out"
    _run(params, inputs, out_dir)
    victim = "images/big/000005.png"
    (out_dir / victim).unlink()
    out = _run(params, inputs, out_dir)
    assert out.metrics["generated"] == 1 and out.metrics["reused"] == 7
    assert _snapshot(out_dir) == reference


@pytest.mark.parametrize("target,at,redone", [
    ("_write_image", 1, 8),  # first image: nothing recorded
    ("_write_image", 6, 4),  # mid second shard: its written images are unrecorded and redone
    ("_write_shard_manifest", 2, 4),  # images of shard 1 on disk, manifest not yet updated
])
def test_resume_after_kill_matches_uninterrupted_run(params, inputs, tmp_path, reference, monkeypatch,
                                                     target, at, redone):
    out_dir = tmp_path / "out"
    real = getattr(shards, target)
    calls = {"n": 0}

    def dying(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == at:
            raise _Killed(f"killed at {target} call {at}")
        return real(*args, **kwargs)

    monkeypatch.setattr(shards, target, dying)
    with pytest.raises(_Killed):
        _run(params, inputs, out_dir)
    assert not (out_dir / "manifest.csv").exists()
    (out_dir / "images" / "small" / f"{TEMP_PREFIX}left-by-kill.png").write_bytes(b"\x89PNG partial")
    monkeypatch.setattr(shards, target, real)
    out = _run(params, inputs, out_dir)
    assert _snapshot(out_dir) == reference
    assert out.metrics["generated"] == redone and out.metrics["reused"] == 8 - redone
    assert not list(out_dir.rglob(TEMP_PREFIX + "*"))


def test_resume_after_sigkill_of_a_real_process(params, inputs, tmp_path, reference):
    out_dir = tmp_path / "out"
    marker = tmp_path / "shard0-recorded"
    script = f"""
import sys, time, pathlib
sys.path.insert(0, {str(Path(__file__).parent)!r})
import tasks
from tasks import generate as G
from tasks.generation import shards
from conftest import make_params
real = shards._write_shard_manifest
def slow(out_dir, shard, rows):
    real(out_dir, shard, rows)
    if shard == 0:
        pathlib.Path({str(marker)!r}).write_text("x")
        time.sleep(120)
shards._write_shard_manifest = slow
G.run(make_params(pathlib.Path({str(tmp_path)!r})), model=pathlib.Path({str(inputs[0])!r}),
      prompts=pathlib.Path({str(inputs[1])!r}), out_dir=pathlib.Path({str(out_dir)!r}))
"""
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=Path(__file__).parent.parent)
    try:
        deadline = time.monotonic() + 120
        while not marker.exists():
            assert proc.poll() is None, "generation process died before the kill point"
            assert time.monotonic() < deadline, "kill point never reached"
            time.sleep(0.2)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    recorded = pd.read_csv(out_dir / "shards" / "shard-00000.csv")
    assert len(recorded) == 4 and not (out_dir / "shards" / "shard-00001.csv").exists()
    out = _run(params, inputs, out_dir)
    assert out.metrics["generated"] == 4 and out.metrics["reused"] == 4
    assert _snapshot(out_dir) == reference


def test_rerun_redoes_tampered_images_and_unreadable_shard_manifests(params, inputs, tmp_path, reference):
    out_dir = tmp_path / "out"
    _run(params, inputs, out_dir)
    (out_dir / "images" / "small" / "000002.png").write_bytes(b"not the recorded image")  # hash no longer matches
    (out_dir / "shards" / "shard-00001.csv").write_bytes(b"\xff\xfe\x00garbage")  # shard 1 record unreadable
    out = _run(params, inputs, out_dir)
    assert out.metrics["generated"] == 5 and out.metrics["reused"] == 3
    assert _snapshot(out_dir) == reference


def test_rerun_with_changed_params_removes_stale_images(params, inputs, tmp_path, reference):
    out_dir = tmp_path / "out"
    _run(params, inputs, out_dir)
    smaller = make_params(tmp_path, {"generate": {"num_images": 4, "interpolation_frames": 3}})
    out = _run(smaller, inputs, out_dir)  # the slerp grid is not part of the recipe: nothing is regenerated
    from PIL import Image

    assert Image.open(out.grids / "interpolation.png").size == (3 * 32, 32)
    manifest = pd.read_csv(out.manifest)
    assert len(manifest) == 4 and out.metrics["reused"] == 4 and out.metrics["generated"] == 0
    images = {p.relative_to(out_dir).as_posix() for p in (out_dir / "images").rglob("*.png")}
    assert images == set(manifest["file_name"])
    assert not (out_dir / "shards" / "shard-00001.csv").exists()
    assert all(reference[f] == sha256_file(out_dir / f) for f in images)


def test_full_disk_stops_clearly_and_rerun_completes(params, inputs, tmp_path, reference, monkeypatch):
    import tasks.io

    out_dir = tmp_path / "out"
    real = tasks.io.atomic_write_bytes
    calls = {"n": 0}

    def full_disk(path, data, **kwargs):
        calls["n"] += 1
        if calls["n"] < 6:
            return real(path, data, **kwargs)
        with atomic_open(path, "wb", **kwargs) as fh:  # half a file reaches the disk, then the device is full
            fh.write(data[: len(data) // 2])
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(tasks.io, "atomic_write_bytes", full_disk)
    with pytest.raises(StageError, match="disk is full"):
        _run(params, inputs, out_dir)
    recorded = pd.concat(pd.read_csv(p) for p in (out_dir / "shards").glob("*.csv"))
    assert 0 < len(recorded) < 8
    for f, h in zip(recorded["file_name"], recorded["sha256"]):  # every listed file is complete
        assert sha256_file(out_dir / f) == h
    assert not list(out_dir.rglob(TEMP_PREFIX + "*"))
    monkeypatch.setattr(tasks.io, "atomic_write_bytes", real)
    _run(params, inputs, out_dir)
    assert _snapshot(out_dir) == reference


def test_gx_rejects_broken_manifest_naming_rows(params, inputs, tmp_path, reference):
    out = _run(params, inputs, tmp_path / "out")
    manifest = pd.read_csv(out.manifest, keep_default_na=False)
    manifest.loc[2, "status"] = "fine"
    manifest.loc[5, "intended_label"] = "medium"
    with pytest.raises(ValidationFailed) as err:
        validate(manifest, "generate_manifest", classes=CLASSES)
    assert manifest.loc[2, "file_name"] in str(err.value) and manifest.loc[5, "file_name"] in str(err.value)


@pytest.mark.slow
def test_dask_two_workers_byte_identical_to_in_process(inputs, tmp_path, reference):
    params = make_params(tmp_path, {"generate": {"engine": "dask", "dask_workers": 2}})
    out = _run(params, inputs, tmp_path / "out")
    assert out.metrics["generated"] == 8
    assert _snapshot(tmp_path / "out") == reference


LAUNCHED = '''
import sys
sys.path.insert(0, {tests!r})
import tasks
from pathlib import Path
from conftest import make_params
from tasks.generation import engines
from tasks.stage import run_stage
real = engines.generate_shard
def traced(job, *args, **kwargs):
    print(f"RANK {{engines._process_group().process_index}} SHARD {{job.shard}}", flush=True)
    return real(job, *args, **kwargs)
engines.generate_shard = traced
out = run_stage("generate", make_params(Path({root!r})))
print("RANK-DONE", int(out.metrics["generated"]), flush=True)
'''


@pytest.mark.slow
def test_accelerate_launch_two_cpu_processes_byte_identical_to_in_process(inputs, tmp_path, reference):
    """`accelerate launch --num_processes 2 -m tasks.generate` (one process per GPU) splits the shards between the
    processes; the main process alone cleans, merges and logs, and the output is the in-process run's, byte for byte."""
    import shutil

    import mlflow

    params = make_params(tmp_path)
    shutil.copytree(inputs[0], params.paths.dreambooth / "model")
    (params.paths.caption).mkdir(parents=True)
    shutil.copy(inputs[1], params.paths.caption / "prompts.json")
    out_dir = params.paths.generate
    (out_dir / "images" / "big").mkdir(parents=True)
    (out_dir / "images" / "big" / "009999.png").write_bytes(b"left over from an old plan")
    (out_dir / "images" / "big" / f"{TEMP_PREFIX}left-by-kill.png").write_bytes(b"\x89PNG partial")
    script = tmp_path / "launched.py"
    script.write_text(LAUNCHED.format(tests=str(Path(__file__).parent), root=str(tmp_path)))
    accelerate = Path(sys.executable).parent / "accelerate"
    # --multi_gpu on a machine without CUDA is accelerate's multi-CPU (gloo) launcher; --cpu would run one process.
    proc = subprocess.run([str(accelerate), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                           "--main_process_port", str(free_port()),
                           "--mixed_precision", "no", "--dynamo_backend", "no", str(script)],
                          capture_output=True, text=True, timeout=480, env=dict(os.environ, OMP_NUM_THREADS="1"),
                          cwd=Path(__file__).parent.parent)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(line for line in proc.stdout.splitlines() if line.startswith("RANK ")) == [
        "RANK 0 SHARD 0", "RANK 1 SHARD 1"]  # each shard generated once, by its own process
    assert proc.stdout.count("RANK-DONE 8") == 2  # every process returns the main process's metrics
    assert _snapshot(out_dir) == reference
    runs = mlflow.search_runs(experiment_names=["synthloop"], output_format="list")
    # one generate run (the main process logs; the other rank does not), under the one loop lineage run (#15)
    by_name = {r.info.run_name: r for r in runs}
    assert sorted(by_name) == ["generate", "loop"] and len(runs) == 2
    assert by_name["generate"].data.metrics["generated"] == 8
    assert by_name["generate"].data.tags["mlflow.parentRunId"] == by_name["loop"].info.run_id
    assert json.loads((params.paths.metrics / "generate.json").read_text())["generated"] == 8


def test_generated_images_follow_the_data_sets_colour_mode(inputs, tmp_path):
    """ingest.channels 1: every saved image (and grid) is mode L, the luma of what the RGB run draws; 3: RGB."""
    import numpy as np
    from PIL import Image

    runs = {}
    for channels in (1, 3):
        p = make_params(tmp_path / str(channels), {"generate": {"num_images": 4}, "ingest": {"channels": channels}})
        out = _run(p, inputs, p.paths.generate)
        runs[channels] = {f.relative_to(out.images).as_posix(): Image.open(f) for f in sorted(out.images.rglob("*.png"))}
        grid_modes = {Image.open(g).mode for g in out.grids.glob("*.png")}
        assert grid_modes == {"L" if channels == 1 else "RGB"}
    assert len(runs[1]) == 4 and runs[1].keys() == runs[3].keys()
    assert {im.mode for im in runs[1].values()} == {"L"} and {im.mode for im in runs[3].values()} == {"RGB"}
    assert any(np.ptp(np.asarray(im, dtype=int), axis=-1).max() > 0 for im in runs[3].values()), \
        "the random tiny model draws colour: the RGB run must keep it"
    for name, gray in runs[1].items():
        luma = np.asarray(runs[3][name].convert("L"), dtype=int)
        assert np.abs(np.asarray(gray, dtype=int) - luma).max() <= 1, name


# --------------------------------------------------------------------------------------------- top-up
def _filter_a_third(monkeypatch) -> None:
    """A filter that drops about one image in three, decided by the image's own bytes (deterministic like the
    real filters): stands in for a model that sometimes renders black or flat images."""
    import hashlib

    from tasks.generation.filters import quantise

    real = shards.image_status

    def status(image):
        if hashlib.sha256(quantise(image).tobytes()).digest()[0] % 3 == 0:
            return "black"
        return real(image)

    monkeypatch.setattr(shards, "image_status", status)


@pytest.fixture(scope="module")
def topped_up(inputs, tmp_path_factory):
    """One uninterrupted run with the one-in-three filter and 3 top-up rounds: (snapshot, manifest, metrics)."""
    mp = pytest.MonkeyPatch()
    _filter_a_third(mp)
    try:
        root = tmp_path_factory.mktemp("generate-topup")
        out = _run(make_params(root, {"generate": {"top_up_rounds": 3}}), inputs, root / "out")
    finally:
        mp.undo()
    return _snapshot(root / "out"), pd.read_csv(out.manifest, keep_default_na=False), out.metrics


def test_top_up_replaces_filtered_images_so_each_class_reaches_its_count(topped_up):
    from tasks.generation.plan import derive_seed

    _, manifest, metrics = topped_up
    extra = manifest[manifest["top_up_round"] > 0]
    assert len(extra) > 0 and metrics["top_up_images"] == len(extra)  # the filter dropped some planned images
    assert len(manifest[manifest["top_up_round"] == 0]) == 8
    ok = manifest[manifest["status"] == "ok"]["intended_label"].value_counts()
    for c in CLASSES:  # every class has its 4 planned ok images, or the shortfall says what is missing
        assert ok.get(c, 0) == 4 or metrics["shortfall"] > 0
    assert metrics["shortfall"] == sum(max(0, 4 - ok.get(c, 0)) for c in CLASSES)
    assert manifest["index"].tolist() == list(range(len(manifest)))
    assert (extra["seed"] == [derive_seed(100, i) for i in extra["index"]]).all()
    assert extra["shard"].min() >= 2 and metrics["top_up_rounds_run"] == extra["top_up_round"].max()


def test_top_up_resume_after_kill_is_the_uninterrupted_set(inputs, tmp_path, monkeypatch, topped_up):
    reference, manifest, _ = topped_up
    _filter_a_third(monkeypatch)
    params = make_params(tmp_path, {"generate": {"top_up_rounds": 3}})
    real, calls = shards._write_image, {"n": 0}

    def dying(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 9:  # the first top-up image: the planned 8 are written and recorded
            raise _Killed("killed in the first top-up round")
        return real(*args, **kwargs)

    monkeypatch.setattr(shards, "_write_image", dying)
    with pytest.raises(_Killed):
        _run(params, inputs, tmp_path / "out")
    monkeypatch.setattr(shards, "_write_image", real)
    out = _run(params, inputs, tmp_path / "out")
    assert _snapshot(tmp_path / "out") == reference
    assert out.metrics["reused"] == 8 and out.metrics["generated"] == len(manifest) - 8


def test_top_up_off_keeps_the_shortfall_visible(inputs, tmp_path, monkeypatch, topped_up):
    _filter_a_third(monkeypatch)
    out = _run(make_params(tmp_path, {"generate": {"top_up_rounds": 0}}), inputs, tmp_path / "out")
    manifest = pd.read_csv(out.manifest)
    assert len(manifest) == 8 and (manifest["top_up_round"] == 0).all()
    assert out.metrics["top_up_images"] == 0 and out.metrics["shortfall"] == (manifest["status"] != "ok").sum() > 0

"""params.yaml is parsed once into frozen pydantic models; every invalid config fails loudly, by key."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tasks.params import STAGES, ParamsError, apply_overrides, load_params, parse_params

REPO = Path(__file__).resolve().parent.parent


def _raw() -> dict:
    return yaml.safe_load((REPO / "params.yaml").read_text())


def test_params_yaml_is_valid_and_has_a_section_per_stage():
    params = load_params(REPO / "params.yaml")
    for stage in STAGES:
        assert hasattr(params, stage), f"params has no section for stage {stage}"
        assert hasattr(params.paths, stage), f"paths has no output folder for stage {stage}"


@pytest.mark.parametrize("profile", sorted((REPO / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_profile_validates(profile: Path):
    params = load_params(profile)
    assert params.profile == profile.stem


def test_gpu_profile_is_the_production_setting():
    params = load_params(REPO / "configs" / "gpu-sd15.yaml")
    assert params.pretrain.base_model == "runwayml/stable-diffusion-v1-5"
    assert params.generate.num_images == 10_000
    assert params.ingest.image_size == 512
    assert params.generate.guidance_scale == 8.0 and params.generate.num_inference_steps == 30
    assert params.seed == 100


def test_params_are_frozen():
    params = load_params(REPO / "params.yaml")
    with pytest.raises(Exception):
        params.generate.num_images = 5  # type: ignore[misc]


@pytest.mark.parametrize(
    ("patch", "message"),
    [
        ({"generate": {"num_imagez": 5}}, "generate.num_imagez: unknown key"),
        ({"generate": {"num_images": 0}}, "generate.num_images"),
        ({"ingest": {"split": {"train": 0.5, "val": 0.5, "test": 0.5}}}, "must sum to 1"),
        ({"phantom": {"thresholds": [100.0, 110.0]}}, "cut points"),
        ({"dataset": {"classes": ["a", "a"]}}, "duplicates"),
        ({"dataset": {"classes": ["a", "reject"]}}, "reserved"),
        ({"dataset": {"source": "files"}}, "dataset.source"),
        ({"dataset": {"source": "folder"}}, "no reference labeler"),
        ({"dataset": {"source": "folder"}, "review": {"mode": "manual"}}, "inside paths.phantom"),
        ({"dataset": {"source": "folder"}, "review": {"mode": "manual"},
          "schedule": {"set_params": ["review.mode = reference"]}}, "schedule.set_params sets review.mode=reference"),
        ({"dataset": {"source": "folder"}, "review": {"mode": "manual"},
          "schedule": {"set_params": ["review. mode='reference'"]}}, "schedule.set_params sets review.mode=reference"),
        ({"caption": {"instance_token": "two words"}}, "single word"),
        ({"evaluate": {"seeds": [1, 2]}}, "evaluate.seeds was replaced by evaluate.repeats"),
        ({"evaluate": {"arms": ["real+augment"]}}, "including 'real'"),
        ({"evaluate": {"curve_repeats": 9}}, "exceeds evaluate.repeats"),
        ({"review": {"mode": "maybe"}}, "review.mode"),
        ({"schedule": {"cron": "every night"}}, "5 fields"),
        ({"colour": "blue"}, "colour: unknown key"),
    ],
)
def test_invalid_params_name_the_key(patch: dict, message: str):
    data = _raw()
    for section, value in patch.items():
        if isinstance(value, dict):
            data[section] = {**data.get(section, {}), **value}
        else:
            data[section] = value
    with pytest.raises(ParamsError, match=message.replace(".", r"\.").replace("(", r"\(")):
        parse_params(data, "test")


def test_missing_params_file_is_a_clear_error(tmp_path: Path):
    with pytest.raises(ParamsError, match="params file not found"):
        load_params(tmp_path / "nope.yaml")


def test_broken_yaml_is_a_clear_error(tmp_path: Path):
    bad = tmp_path / "params.yaml"
    bad.write_text("seed: [1, 2\n")
    with pytest.raises(ParamsError, match="not valid YAML"):
        load_params(bad)


def test_apply_overrides_keeps_comments_and_validates_first(tmp_path: Path):
    path = tmp_path / "params.yaml"
    path.write_text((REPO / "params.yaml").read_text())
    params = apply_overrides(path, ["review.mode=accept-confident", "generate.num_images=12"])
    assert params.review.mode == "accept-confident" and params.generate.num_images == 12
    text = path.read_text()
    assert "# synthloop parameters" in text and "num_images: 12" in text
    before = path.read_text()
    with pytest.raises(ParamsError):
        apply_overrides(path, ["generate.num_images=-3"])
    assert path.read_text() == before, "an invalid override must leave the file untouched"
    with pytest.raises(ParamsError, match="unknown section"):
        apply_overrides(path, ["nosuch.key=1"])


def test_per_image_training_needs_caption_prompts_for_generation(tmp_path) -> None:
    from tasks.params import ParamsError

    from conftest import make_params

    with pytest.raises(ParamsError, match="generate.prompt_source: captions"):
        make_params(tmp_path, {"dreambooth": {"caption_mode": "per_image"}})
    ok = make_params(tmp_path, {"dreambooth": {"caption_mode": "per_image"}, "generate": {"prompt_source": "captions"}})
    assert ok.generate.prompt_source == "captions"


def _folder_params(tmp_path: Path, dataset: dict | None = None):
    from conftest import make_params

    p = make_params(tmp_path, {"dataset": {"source": "folder", **(dataset or {})}, "review": {"mode": "manual"},
                               "paths": {"raw": "mine"}})
    return p


def test_classes_come_from_the_folder_sorted_by_name(tmp_path: Path) -> None:
    p = _folder_params(tmp_path)
    for name in ("score_3", "score_1", "score_2", ".hidden"):
        (p.paths.raw / name).mkdir(parents=True)
    (p.paths.raw / "loose.png").write_bytes(b"x")  # a file is no class (ingest quarantines it)
    assert p.classes == ("score_1", "score_2", "score_3")
    assert p.pretrain_pool() is None, "user data has no phantom pool"
    listed = _folder_params(tmp_path, {"classes": ["score_3", "score_1"], "ordered": True})
    assert listed.classes == ("score_3", "score_1") and listed.ordered


def test_classes_come_from_metadata_labels(tmp_path: Path) -> None:
    p = _folder_params(tmp_path)
    p.paths.raw.mkdir(parents=True)
    (p.paths.raw / "metadata.csv").write_text("file_name,label\na.png,zeta\nb.png, alpha\nc.png,zeta\nd.png,\n")
    assert p.classes == ("alpha", "zeta")


def test_unreadable_classes_are_a_clear_error(tmp_path: Path) -> None:
    p = _folder_params(tmp_path)
    with pytest.raises(ParamsError, match="paths.raw.*is not a folder"):
        p.classes
    (p.paths.raw / "only").mkdir(parents=True)
    with pytest.raises(ParamsError, match="at least two classes"):
        p.classes
    (p.paths.raw / "metadata.csv").write_text("file_name,klass\na.png,x\n")
    with pytest.raises(ParamsError, match="no 'label' column"):
        p.classes


def test_phantom_demo_defaults(tmp_path: Path) -> None:
    params = load_params(REPO / "params.yaml")
    assert params.dataset.source == "phantom" and params.classes == ("small", "big") and params.ordered
    assert params.pretrain_pool() == params.paths.phantom / "unlabeled"
    assert "hip" not in params.caption.template, "the default template must not assume hip X-rays"

"""Config loading: one override rule and one path rule for run and batch configs, strict sections."""

from __future__ import annotations

import inspect

import pytest

from pipeline.errors import InputError
from pipeline.params import Params
from pipeline.run import config as config_module
from pipeline.run.batch import BatchConfig, MovieEntry
from pipeline.run.config import RunConfig, apply_overrides, load_config


def _sections():
    """Every parameter / config model reachable from the run and batch configs."""
    seen, todo = set(), [RunConfig, BatchConfig, MovieEntry]
    while todo:
        model = todo.pop()
        if model in seen:
            continue
        seen.add(model)
        for field in model.model_fields.values():
            for candidate in (field.annotation, *getattr(field.annotation, "__args__", ())):
                if inspect.isclass(candidate) and issubclass(candidate, Params):
                    todo.append(candidate)
    return sorted(seen, key=lambda m: m.__name__)


@pytest.mark.parametrize("model", _sections(), ids=lambda m: m.__name__)
def test_every_section_is_strict(model):
    assert issubclass(model, Params)
    assert model.model_config.get("extra") == "forbid" and model.model_config.get("allow_inf_nan") is False


@pytest.mark.parametrize("field,value", [("input.pixel_size_um", ".inf"), ("input.frame_interval_s", ".inf"),
                                         ("zones.membrane_band_um", ".inf"), ("detect.min_snr", ".nan")])
def test_infinite_and_nan_values_are_refused_with_the_field(tmp_path, field, value):
    path = tmp_path / "run.yaml"
    path.write_text("input:\n  path: movie.tif\n")
    with pytest.raises(InputError) as err:
        load_config(path, [f"{field}={value}"])
    assert field in str(err.value) and "finite" in str(err.value)


def test_bad_yaml_in_an_override_is_an_input_error():
    with pytest.raises(InputError, match=r"detect\.min_snr=\[1.*not valid YAML"):
        apply_overrides({}, ["detect.min_snr=[1"], "run.yaml")


def test_an_override_through_a_value_names_the_key():
    with pytest.raises(InputError, match="detect.min_snr.x: min_snr is not a section"):
        apply_overrides({"detect": {"min_snr": 4}}, ["detect.min_snr.x=1"], "run.yaml")


def test_run_config_paths_expand_variables_like_batch_configs(tmp_path, monkeypatch):
    monkeypatch.setenv("UPTRACK_DATA", str(tmp_path / "data"))
    path = tmp_path / "configs" / "run.yaml"
    path.parent.mkdir()
    path.write_text("input:\n  path: $UPTRACK_DATA/movie.tif\noutput:\n  dir: ../out\n")
    config = load_config(path)
    assert config.input.path == tmp_path / "data" / "movie.tif"
    assert config.output.dir == tmp_path / "out"
    assert config_module.resolve_path("~/x", tmp_path).startswith(str(tmp_path.home()))


@pytest.mark.parametrize("name", ["../..", "..", "a/b", "/tmp/x", " "])
def test_output_name_cannot_leave_output_dir(tmp_path, name):
    path = tmp_path / "run.yaml"
    path.write_text("input:\n  path: movie.tif\n")
    with pytest.raises(InputError, match="output.name.*plain file name"):
        load_config(path, [f"output.name={name!r}"])

"""JSON Schemas of the run and batch configs (configs/*.schema.json) for editors: current, and they accept the shipped configs."""

import json
from pathlib import Path

import jsonschema
import pytest
import yaml

from pipeline.run.batch.schema import json_schemas

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.mark.parametrize("kind", ["run", "batch"])
def test_schema_files_are_current(kind):
    committed = json.loads((CONFIGS / f"{kind}.schema.json").read_text())
    assert committed == json_schemas()[kind], (
        f"configs/{kind}.schema.json is stale: regenerate with .venv/bin/python -m pipeline.run.batch.schema")


@pytest.mark.parametrize(("name", "kind"), [("sample", "run"), ("batch", "batch"), ("hpc_slurm", "batch")])
def test_shipped_configs_validate_and_name_their_schema(name, kind):
    text = (CONFIGS / f"{name}.yaml").read_text()
    assert text.startswith(f"# yaml-language-server: $schema={kind}.schema.json\n")
    jsonschema.validate(yaml.safe_load(text), json_schemas()[kind])


def test_schema_rejects_what_the_config_rejects():
    schema = json_schemas()["run"]
    with pytest.raises(jsonschema.ValidationError, match="'detekt' was unexpected"):
        jsonschema.validate({"input": {"path": "m.tif", "channels": {"cells": 0, "particles": 1}}, "detekt": {}}, schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"input": {"path": "m.tif", "channels": {"cells": 0, "particles": 1}},
                             "output": {"image_downsample": 0}}, schema)
    described = schema["$defs"]["OutputConfig"]["properties"]["image_downsample"]
    assert "binned" in described["description"]

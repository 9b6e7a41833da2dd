"""The editor schema shipped in config/ matches the models, and accepts the example."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import jsonschema
import yaml

REPO = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(REPO / "tools"))

from gen_config_schema import OUT, render  # noqa: E402


def test_schema_file_is_current() -> None:
    assert OUT.read_text() == render(), "stale: run python tools/gen_config_schema.py"


def test_example_config_validates_against_the_schema() -> None:
    schema = json.loads(OUT.read_text())
    example = yaml.safe_load((REPO / "config" / "example.yaml").read_text())
    example = {k: v for k, v in example.items() if not k.startswith("x-")}
    jsonschema.validate(example, schema)


def test_schema_flags_a_misspelt_key_as_the_loader_does() -> None:
    schema = json.loads(OUT.read_text())
    example = yaml.safe_load((REPO / "config" / "example.yaml").read_text())
    example = {k: v for k, v in example.items() if not k.startswith("x-")}
    example["sensors"][0]["modbus"]["hots"] = example["sensors"][0]["modbus"].pop("host")
    try:
        jsonschema.validate(example, schema)
    except jsonschema.ValidationError:
        return
    raise AssertionError("the schema accepted an unknown key")

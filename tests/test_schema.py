"""The records' JSON Schema: shipped with the package, true to the README and to real output."""

from __future__ import annotations

import json
import re
from pathlib import Path

import jsonschema
from conftest import records, run_cli

from llmcluster.wire.records import RECORD_TYPES, records_json_schema

README = Path(__file__).resolve().parent.parent / "README.md"


def _readme_table() -> dict[str, set[str]]:
    """type -> top-level field names, from the README's JSONL table."""
    text = README.read_text()
    section = text[text.index("## JSONL records") :]
    table: dict[str, set[str]] = {}
    for line in section.splitlines():
        match = re.match(r"\| `(\w+)` \| [^|]+ \| (.+) \|$", line)
        if match:
            fields = re.sub(r"\{[^}]*\}", "", match.group(2))  # nested fields stay nested
            fields = re.sub(r"\([^)]*\)", "", fields)  # and so do explanations
            table[match.group(1)] = set(re.findall(r"`(\w+)`", fields))
    return table


def test_the_readme_table_lists_exactly_the_schema_fields() -> None:
    schema = records_json_schema()
    table = _readme_table()
    assert set(table) == set(RECORD_TYPES)
    for name, cls in RECORD_TYPES.items():
        properties = set(schema["$defs"][cls.__name__]["properties"]) - {"type"}
        assert table[name] == properties, name


def test_the_schema_command_prints_a_valid_schema() -> None:
    done = run_cli("schema", timeout=20)
    assert done.returncode == 0
    schema = json.loads(done.stdout)
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema == json.loads(json.dumps(records_json_schema()))


def test_every_line_of_a_run_with_a_failure_validates(clean_table: None) -> None:
    done = run_cli(
        "--ranks",
        "8",
        "--nproc-per-node",
        "4",
        "--steps",
        "12",
        "--format",
        "jsonl",
        "--speed",
        "1000000",
        "--inject",
        "kill:rank=3,step=4",
        timeout=90,
    )
    assert done.returncode == 0, done.stderr
    validator = jsonschema.Draft202012Validator(records_json_schema())
    recs = records(done.stdout)
    assert {r["type"] for r in recs} >= {
        "run",
        "ready",
        "step",
        "ranks",
        "phase",
        "eval",
        "checkpoint",
        "export",
        "failure",
        "restart",
        "summary",
    }
    for record in recs:
        errors = [e.message for e in validator.iter_errors(record)]
        assert not errors, (record["type"], errors[:3])
    broken = dict(recs[-1], steps="many")
    assert list(validator.iter_errors(broken))

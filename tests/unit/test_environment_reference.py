"""The environment reference in docs/ is what the model says."""

from __future__ import annotations

from airlock_dev.reference import render
from tests.support import PROJECT


def test_the_committed_reference_matches_the_model():
    committed = (PROJECT / "docs" / "environment-reference.md").read_text()

    assert committed == render(), (
        "regenerate: PYTHONPATH=plugins:tools python -m airlock_dev.reference > docs/environment-reference.md"
    )


def test_every_top_level_field_of_the_demo_file_is_documented():
    import yaml

    demo = yaml.safe_load((PROJECT / "include" / "environments" / "demo.yaml").read_text())
    reference = render()

    for key in demo:
        assert f"| `{key}` |" in reference, key

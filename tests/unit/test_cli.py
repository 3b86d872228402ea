"""The CLI's own logic: what it checks and what it hands the stages."""

from __future__ import annotations

from pathlib import Path

import pytest

from efm import cli


def test_an_input_given_by_uri_keeps_its_prefix(fake_gcs: Path) -> None:
    (fake_gcs / "ds").mkdir()
    assert str(cli._existing("gs://bucket/ds", "dataset")) == "gs://bucket/ds"  # pathlib: gs:/bucket/ds
    with pytest.raises(FileNotFoundError, match="dataset not found: gs://bucket/nope"):
        cli._existing("gs://bucket/nope", "dataset")

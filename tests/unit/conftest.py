"""Shared by the unit tests."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import pytest

FAKE_BUCKET = "gs://bucket"


@pytest.fixture
def fake_gcs(tmp_path: Path) -> Iterator[Path]:
    """gs://bucket/... served from the yielded local folder through etils.epath (no network):
    what reads a gs:// URI through epath finds files only if the URI reached it whole."""
    from etils.epath import gpath
    from etils.epath import testing as epath_testing

    root = tmp_path / "bucket"
    root.mkdir()

    def local(fn: Any, path: Any, *args: Any, **kwargs: Any) -> Any:  # gs://bucket/x -> root/x
        return fn(os.fspath(path).replace(FAKE_BUCKET, str(root)), *args, **kwargs)

    fake = epath_testing.mock_epath(exists=local, isdir=local, glob=local, open=local, listdir=local, stat=local)
    with mock.patch.object(gpath, "_is_tf_installed", lambda: False), fake:  # else TF's own GCS client
        yield root

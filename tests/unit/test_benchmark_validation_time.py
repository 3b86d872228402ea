"""benchmarks/validation_time.py: kfp task wall times read off the local runner's log lines."""

from __future__ import annotations

import pytest
from validation_time import task_seconds


def test_task_seconds_from_the_log_lines_even_across_midnight() -> None:
    log = "\n".join([
        "23:59:50.000 - INFO - Executing task \x1b[96m'validate'\x1b[0m",
        "23:59:55.500 - INFO - Executing task 'dataset'",
        "23:59:58.000 - INFO - Task 'dataset' finished with status SUCCESS",
        "00:00:20.250 - INFO - Task \x1b[96m'validate'\x1b[0m finished with status \x1b[92mSUCCESS\x1b[0m",
    ])
    seconds = task_seconds(log)
    assert seconds["dataset"] == pytest.approx(2.5)
    assert seconds["validate"] == pytest.approx(30.25)  # not -86369.75: the lines hold the time of day only

"""Types shared across stages."""

from collections.abc import Callable

Logger = Callable[[dict[str, float], int], None]  # (metrics, step): MLflow in pipelines, None in tests

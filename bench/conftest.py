"""Shared fixtures of the benchmark suites, and the ratio table printed at the end.

Every benchmark records its median under (suite, measurement, backend); the summary
reports each backend relative to fim *from the same run* (ratio = other's time /
fim's time, so > 1 means fim is faster), which is what bench/RESULTS.md records.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import pytest

CACHE = Path(__file__).resolve().parent / ".cache"
_results: dict[tuple[str, str], dict[str, float]] = defaultdict(dict)


@pytest.fixture(scope="session")
def cache_dir() -> Path:
    CACHE.mkdir(exist_ok=True)
    return CACHE


@pytest.fixture
def record(request):  # noqa: ANN201
    """``record(measurement, backend, seconds_or_value)`` for the ratio table."""
    suite = Path(request.node.fspath).stem

    def _record(measurement: str, backend: str, value: float) -> None:
        _results[(suite, measurement)][backend] = value

    return _record


def pytest_terminal_summary(terminalreporter) -> None:  # noqa: ANN001
    if not _results:
        return
    tr = terminalreporter
    tr.section("fim ratios (other backend's value / fim's value; > 1: fim better for times)")
    table = []
    for (suite, measurement), by_backend in sorted(_results.items()):
        base = by_backend.get("fim")
        for backend, value in sorted(by_backend.items()):
            ratio = value / base if base else float("nan")
            tr.write_line(f"{suite:16} {measurement:28} {backend:12} {value:12.4f}  "
                          f"ratio {ratio:7.2f}")
            table.append({"suite": suite, "measurement": measurement, "backend": backend,
                          "value": value, "ratio_vs_fim": ratio})
    CACHE.mkdir(exist_ok=True)
    (CACHE / "last-ratios.json").write_text(json.dumps(table, indent=1))

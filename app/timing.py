"""Start-up phases of a run, written where ``FIM_TRACE_STARTUP`` points.

Each phase is a mark: a name and the CLOCK_MONOTONIC time (ns) it was reached, the clock
every process of the machine shares, so whoever started the image can subtract its own
start time (bench/bench_run.py prints "what is spent where" from them). Marking costs a
list append; without the variable nothing is written.
"""

from __future__ import annotations

import json
import os
import time

_marks: list[tuple[str, int]] = []
_target = os.environ.pop("FIM_TRACE_STARTUP", None)  # not passed on into the container


def mark(name: str, at: int | None = None) -> None:
    """Record that the run reached phase ``name`` now (or at monotonic ``at`` ns)."""
    if _target is not None:
        _marks.append((name, time.monotonic_ns() if at is None else at))


def write() -> None:
    """Append this run's marks to the trace file as one JSON line (once, at exit)."""
    if _target is None or not _marks:
        return
    try:
        with open(_target, "a", encoding="utf-8") as f:
            f.write(json.dumps(dict(_marks)) + "\n")
    except OSError:
        pass  # a diagnostic only: never fails a run
    _marks.clear()

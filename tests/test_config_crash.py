"""The configuration under kill -9 and concurrent editors, through real image processes."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time
from pathlib import Path

from tests.images import ok, run

KILLS = 100
VALUE = "v" * 2000  # a larger document: more of each edit is spent writing



def _env(app: Path) -> dict[str, str]:
    return {"PATH": os.environ["PATH"], "HOME": str(app.parent / "home"), "APP": str(app)}



def _keys(app: Path) -> list[str]:
    listed = ok(app, "fim-env", "list").splitlines()
    return [line.split("=", 1)[0] for line in listed]


def test_kill_9_at_random_moments_leaves_the_old_or_the_new_config(app: Path) -> None:
    """Each round starts an edit that adds the next key and kills it after a random delay
    spanning its whole life (start-up, reading, writing); then the image must start and
    hold the keys of every finished edit, plus the killed one's or not, and nothing else."""
    durations = []
    for i in range(3):  # how long an edit lives here, payload extraction aside
        start = time.monotonic()
        ok(app, "fim-env", "add", f"WARM{i}=1")
        durations.append(time.monotonic() - start)
    ok(app, "fim-env", "clear")
    life = sorted(durations)[1]
    rng = random.Random(20240611)
    committed, finished, killed = 0, 0, 0
    for _ in range(KILLS):
        editor = subprocess.Popen([str(app), "fim-env", "add", f"K{committed}={committed}{VALUE}"],
                                  env=_env(app), stdout=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.0, life))
        editor.send_signal(signal.SIGKILL)
        code = editor.wait()
        finished += code == 0
        killed += code == -signal.SIGKILL
        assert run(app, "fim-version", "short").returncode == 0
        values = dict(line.split("=", 1) for line in ok(app, "fim-env", "list").splitlines())
        assert len(values) in (committed, committed + 1) if code else committed + 1
        assert values == {f"K{i}": f"{i}{VALUE}" for i in range(len(values))}
        committed = len(values)
    assert killed >= KILLS // 3 and finished > 0, (killed, finished)


def test_concurrent_editors_lose_no_update(app: Path) -> None:
    rounds = 25
    editors = [
        # A launch that collides with the other editor's write fails to exec with
        # "Text file busy" (sh: 126) before anything runs: the known window (docs/image-format.md),
        # retried here so that the test is about lost updates only.
        subprocess.Popen(["sh", "-c", f'i=0; while [ $i -lt {rounds} ]; do '
                          f'until "$APP" fim-env add "P{n}_$i=$i" >/dev/null; do '
                          f'[ $? -eq 126 ] || exit 1; done; i=$((i+1)); done'],
                         env=_env(app), stderr=subprocess.DEVNULL)
        for n in range(2)
    ]
    seen = 0
    while any(e.poll() is None for e in editors):  # readers meanwhile see growing configs
        count = len(_keys(app))
        assert count >= seen
        seen = count
    assert [e.returncode for e in editors] == [0, 0]
    assert sorted(_keys(app)) == sorted(f"P{n}_{i}" for n in range(2) for i in range(rounds))

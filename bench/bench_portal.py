"""The portal (issue 9): round-trip latency of `fim_portal true` and throughput of
`fim_portal cat` on 100 MiB, from inside a running container, against upstream's
design idea measured the same way: a host daemon that takes each request from a FIFO
and copies the program's stdin and stdout through FIFOs (here in Python, as a model of
FlatImage's five-FIFO transport; it runs on the host, without the sandbox, so it is
the FIFO design's best case).

fim's portal passes the caller's own descriptors (SCM_RIGHTS): no copy loop at all.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest

CALLS = 50
SIZE = 100 << 20


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("portal") / "app.flatimage"
    subprocess.run([sys.executable, "-m", "fim.cli.fim", "build", "blueprint", "-o", str(out),
                    "--runtime", "frozen"], check=True, capture_output=True)
    return out


def _inside(app: Path, script: str) -> float:
    env = {"PATH": "/usr/bin:/bin", "HOME": str(app.parent), "LANG": "C.UTF-8"}
    start = time.perf_counter()
    subprocess.run([str(app), "fim-exec", "sh", "-c", script], check=True, env=env,
                   cwd=app.parent, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def test_fim_portal(app: Path, record) -> None:  # noqa: ANN001
    base = _inside(app, f"i=0; while [ $i -lt {CALLS} ]; do true; i=$((i+1)); done")
    calls = _inside(app, f"i=0; while [ $i -lt {CALLS} ]; do fim_portal true; i=$((i+1)); done")
    record("round trip ms", "fim", (calls - base) / CALLS * 1000)
    plain = _inside(app, f"head -c {SIZE} /dev/zero | cat > /dev/null")
    piped = _inside(app, f"head -c {SIZE} /dev/zero | fim_portal cat > /dev/null")
    # what the portal adds to moving 100 MiB through cat, as a rate
    record("100 MiB through cat, MiB/s", "fim", SIZE / (1 << 20) / max(piped - plain, 1e-3))


#: A model of the FIFO design: the daemon reads a request line from its FIFO, starts the
#: program with pipes, and copies the client's stdin FIFO to it and its stdout to the
#: client's stdout FIFO, then writes the exit code to an exit FIFO.
_DAEMON = textwrap.dedent('''
    import os, subprocess, sys, threading
    d = sys.argv[1]
    while True:
        with open(d + "/request") as f:
            line = f.readline().strip()
        if not line:
            break
        argv = line.split(" ")
        p = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        def pump_in():
            with open(d + "/stdin", "rb") as src:
                while chunk := src.read(65536):
                    p.stdin.write(chunk)
            p.stdin.close()
        t = threading.Thread(target=pump_in); t.start()
        with open(d + "/stdout", "wb") as dst:
            while chunk := p.stdout.read(65536):
                dst.write(chunk)
        t.join()
        with open(d + "/exit", "w") as f:
            f.write(str(p.wait()))
''')

_CLIENT = textwrap.dedent('''
    import os, sys, threading
    d, argv = sys.argv[1], sys.argv[2:]
    with open(d + "/request", "w") as f:
        f.write(" ".join(argv) + "\\n")
    def pump_in():
        with open(d + "/stdin", "wb") as dst:
            while chunk := sys.stdin.buffer.read(65536):
                dst.write(chunk)
    t = threading.Thread(target=pump_in, daemon=True); t.start()
    with open(d + "/stdout", "rb") as src:
        while chunk := src.read(65536):
            sys.stdout.buffer.write(chunk)
    with open(d + "/exit") as f:
        sys.exit(int(f.read()))
''')


def test_fifo_design(record) -> None:  # noqa: ANN001
    with tempfile.TemporaryDirectory() as d:
        for name in ("request", "stdin", "stdout", "exit"):
            os.mkfifo(f"{d}/{name}")
        daemon = subprocess.Popen([sys.executable, "-c", _DAEMON, d])
        client = [sys.executable, "-c", _CLIENT, d]
        try:
            start = time.perf_counter()
            for _ in range(CALLS):
                subprocess.run([*client, "true"], check=True, stdin=subprocess.DEVNULL)
            calls = time.perf_counter() - start
            start = time.perf_counter()
            for _ in range(CALLS):
                subprocess.run([sys.executable, "-c", "pass"], check=True)
            python = time.perf_counter() - start
            # the client's own interpreter start is not the transport's cost
            record("round trip ms", "fifo-design", (calls - python) / CALLS * 1000)
            start = time.perf_counter()
            head = subprocess.Popen(["head", "-c", str(SIZE), "/dev/zero"],
                                    stdout=subprocess.PIPE)
            subprocess.run([*client, "cat"], check=True, stdin=head.stdout,
                           stdout=subprocess.DEVNULL)
            head.wait()
            seconds = time.perf_counter() - start
            record("100 MiB through cat, MiB/s", "fifo-design", SIZE / (1 << 20) / seconds)
        finally:
            with open(f"{d}/request", "w") as f:
                f.write("\n")
            daemon.wait(timeout=30)

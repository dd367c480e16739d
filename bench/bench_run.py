"""Running containers (issue 8): start-up of `./app fim-exec true` against the floor
(bare bwrap) and a bare Python start, and work inside the container per overlay
backend (fimfs, fuse-overlayfs, unionfs-fuse, bwrap's kernel overlay).

The image is a portable blueprint (`fim build blueprint --runtime frozen`) plus one
external layer (FIM_LAYERS) holding /usr/share/doc at /usr/share/corpus, so the
reads go through a DwarFS layer of real size. Figures and the command: bench/RESULTS.md.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fim.sandbox.bwrap import find_bwrap

BACKENDS = ["fimfs", "overlayfs", "unionfs", "bwrap"]
ROUNDS = 5


def _timed(argv: list[str], env: dict[str, str] | None = None, cwd: Path | None = None) -> float:
    start = time.perf_counter()
    subprocess.run(argv, check=True, env=env, cwd=cwd, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def _median(values: list[float]) -> float:
    return sorted(values)[len(values) // 2]


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("run")
    out = d / "app.flatimage"
    subprocess.run([sys.executable, "-m", "fim.cli.fim", "build", "blueprint", "-o", str(out),
                    "--runtime", "frozen"], check=True, capture_output=True)
    tree = d / "tree" / "usr" / "share"
    tree.mkdir(parents=True)
    shutil.copytree("/usr/share/doc", tree / "corpus", symlinks=True)
    subprocess.run([sys.executable, "-m", "fim.cli.fim", "create", str(d / "tree"),
                    str(d / "corpus.dwarfs")], check=True, capture_output=True)
    return out


def _env(app: Path, **extra: str) -> dict[str, str]:
    return {"PATH": "/usr/bin:/bin", "HOME": str(app.parent), "LANG": "C.UTF-8",
            "FIM_LAYERS": str(app.parent / "corpus.dwarfs"), **extra}


#: The start-up phases of a run (app.timing marks), in order: (label, from, to); "spawn"
#: and "exit" are the bench's own clock readings around the process.
PHASES = [
    ("launcher, runtime check, interpreter start", "spawn", "python"),
    ("Python imports (cli.boot)", "python", "imported"),
    ("locate, data dirs, config read", "imported", "configured"),
    ("run set-up (identity, lock, instance dir)", "configured", "mount"),
    ("fork of the mount daemon", "mount", "mounting"),
    ("sandbox set-up (while the daemon mounts)", "mounting", "prepared"),
    ("waiting for the mount, janitor start", "prepared", "bwrap"),
    ("bwrap and `true`", "bwrap", "exited"),
    ("unmount", "exited", "unmounted"),
    ("janitor stop, instance dir removal", "unmounted", "cleaned"),
    ("interpreter exit", "cleaned", "exit"),
]


def _traced(app: Path, env: dict[str, str], trace: Path) -> dict[str, int]:
    """One `fim-exec true` with FIM_TRACE_STARTUP; its marks (monotonic ns)."""
    trace.unlink(missing_ok=True)
    spawn = time.monotonic_ns()
    subprocess.run([str(app), "fim-exec", "true"], check=True, cwd=app.parent,
                   env={**env, "FIM_TRACE_STARTUP": str(trace)}, stdout=subprocess.DEVNULL)
    end = time.monotonic_ns()
    return {"spawn": spawn, **json.loads(trace.read_text()), "exit": end}


def _phase_table(runs: list[dict[str, int]]) -> list[tuple[str, float]]:
    """Median milliseconds of each phase over ``runs``."""
    return [(label, _median([(r[b] - r[a]) / 1e6 for r in runs])) for label, a, b in PHASES]


def test_startup(app: Path, record) -> None:  # noqa: ANN001
    """`fim-exec true`, cold (first run after the build: unpacking the runtime) and warm
    (with no mount of the image up: see test_startup_shared for the others), against
    `bwrap --ro-bind / / --dev /dev --proc /proc true` and `python3 -c pass`, and where
    the time of a run goes (cold and warm, from the run's own marks)."""
    from fim.app import image, runtime

    for unpacked in runtime.app_dirs(image.read_layout(str(app)).build_id, os.getuid(),
                                     os.environ):
        shutil.rmtree(unpacked, ignore_errors=True)
    env = _env(app)
    trace = app.parent / "startup.trace"
    cold_marks = _traced(app, env, trace)
    cold = (cold_marks["exit"] - cold_marks["spawn"]) / 1e9
    warm, warm_marks = [], []
    for _ in range(ROUNDS * 2):  # each mounting its stack: the last run's mount has ended
        _after_linger(app)
        warm.append(_timed([str(app), "fim-exec", "true"], env=env, cwd=app.parent))
    for _ in range(ROUNDS * 2):
        _after_linger(app)
        warm_marks.append(_traced(app, env, trace))
    warm = _median(warm)
    bwrap = find_bwrap(None)
    floor = _median([_timed([bwrap, "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc",
                             "true"]) for _ in range(ROUNDS * 2)])
    python = _median([_timed([sys.executable, "-c", "pass"]) for _ in range(ROUNDS * 2)])
    for name, value in (("fim", warm), ("fim-cold", cold), ("bare-bwrap", floor),
                        ("python3-c-pass", python)):
        record("startup s", name, value)
    print(f"\nfim-exec true: warm {warm * 1000:.0f} ms, cold {cold * 1000:.0f} ms; "
          f"bare bwrap {floor * 1000:.0f} ms (warm - floor = {(warm - floor) * 1000:.0f} ms); "
          f"python3 -c pass {python * 1000:.0f} ms")
    print("| phase | cold ms | warm ms (median) |\n|---|---:|---:|")
    for (label, c), (_, w) in zip(_phase_table([cold_marks]), _phase_table(warm_marks)):
        print(f"| {label} | {c:.1f} | {w:.1f} |")
        record(f"startup phase ms: {label}", "fim", w)


def _image_mounted(app: Path) -> bool:
    """Whether a mount of ``app`` (fim's stack: the mount's source is the image) is up."""
    with open("/proc/self/mountinfo", "rb") as f:
        return any(f" - fuse.fim {app} ".encode() in line for line in f)


def _after_linger(app: Path) -> None:
    """Until the previous run's mount has ended (fimfs.linger), so the next one mounts."""
    deadline = time.monotonic() + 30
    while _image_mounted(app) and time.monotonic() < deadline:
        time.sleep(0.05)


def _flatimage_stack(app: Path) -> list[str]:
    """What FlatImage runs for the same image: native dwarfs at each layer's offset,
    fuse-overlayfs over them, bwrap, then the unmounts (a shell script, one process)."""
    from fim.app import image

    d = app.parent / "flatimage-stack"
    layers = [(app, layer.offset, layer.size) for layer in
              image.list_layers(image.read_layout(str(app)))]
    layers.append((app.parent / "corpus.dwarfs", 0, (app.parent / "corpus.dwarfs").stat().st_size))
    script = ["set -e", "exec 2>/dev/null", f"cd {d}",
              "rm -rf upper work; mkdir -p upper work root"]
    for i, (path, offset, size) in enumerate(layers):
        script += [f"mkdir -p l{i}", f"dwarfs {path} l{i} -o offset={offset},imagesize={size}"]
    lower = ":".join(f"l{i}" for i in reversed(range(len(layers))))
    script += [f"fuse-overlayfs -o lowerdir={lower},upperdir=upper,workdir=work root",
               f"{find_bwrap(None)} --bind root / --dev /dev --proc /proc true",
               # fuse-overlayfs may still hold the layers for a moment after its unmount
               "fusermount3 -u root", *(f"fusermount3 -uz l{i}" for i in range(len(layers)))]
    d.mkdir(exist_ok=True)
    return ["sh", "-c", "\n".join(script)]


def test_startup_shared(app: Path, record) -> None:  # noqa: ANN001
    """`fim-exec true` mounting its own stack (after the last run's mount ended), right
    after another run (within the linger: the mount is reused), and while another run
    of the image is up; bare bwrap and FlatImage's own stack. Interleaved: each round
    runs every case once, so a machine's changing load weighs on all of them alike."""
    env = _env(app)
    run = [str(app), "fim-exec", "true"]
    _timed(run, env=env, cwd=app.parent)  # unpacked, bytecode warm
    bwrap = find_bwrap(None)
    floor_argv = [bwrap, "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "true"]
    tools = all(shutil.which(tool) for tool in ("dwarfs", "fuse-overlayfs", "fusermount3"))
    stack = _flatimage_stack(app) if tools else None
    times: dict[str, list[float]] = {"fim": [], "fim-after": [], "fim-while-up": [],
                                     "bare-bwrap": [], "flatimage-stack": []}
    marks = []
    trace = app.parent / "startup.trace"
    for _ in range(ROUNDS * 2):
        _after_linger(app)
        times["fim"].append(_timed(run, env=env, cwd=app.parent))
        times["fim-after"].append(_timed(run, env=env, cwd=app.parent))
        holder = subprocess.Popen([str(app), "fim-exec", "sh", "-c", "echo up; exec sleep 600"],
                                  env=env, cwd=app.parent, stdout=subprocess.PIPE, text=True)
        try:
            assert holder.stdout is not None and holder.stdout.readline() == "up\n"
            traced = _traced(app, env, trace)
        finally:
            holder.terminate()
            holder.wait()
        marks.append(traced)
        times["fim-while-up"].append((traced["exit"] - traced["spawn"]) / 1e9)
        times["bare-bwrap"].append(_timed(floor_argv))
        if stack is not None:
            times["flatimage-stack"].append(_timed(stack))
    figures = {name: _median(values) for name, values in times.items() if values}
    for name, value in figures.items():
        record("startup shared s", name, value)
    floor = figures["bare-bwrap"]
    print("\n" + ", ".join(f"{name} {value * 1000:.0f} ms" for name, value in figures.items()))
    print(f"while up - bare bwrap = {(figures['fim-while-up'] - floor) * 1000:.0f} ms; "
          f"right after - bare bwrap = {(figures['fim-after'] - floor) * 1000:.0f} ms")
    print("| phase (a run while another is up) | ms (median) |\n|---|---:|")
    for label, w in _phase_table(marks):
        print(f"| {label} | {w:.1f} |")


WORKLOADS = {
    "read all of /usr/share/corpus": "tar -cf - /usr/share/corpus | wc -c",
    "find / -xdev | wc -l": "find / -xdev | wc -l",
    "create 10k small files": ("mkdir -p /bench && cd /bench && i=0; "
                               "while [ $i -lt 10000 ]; do echo $i > f$i; i=$((i+1)); done"),
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("workload", list(WORKLOADS))
def test_inside(app: Path, record, backend: str, workload: str) -> None:  # noqa: ANN001
    data = app.parent / f".{app.name}.data"
    times = []
    for _ in range(3):
        shutil.rmtree(data, ignore_errors=True)
        times.append(_timed([str(app), "fim-root", "sh", "-c", WORKLOADS[workload]],
                            env=_env(app, FIM_OVERLAY=backend), cwd=app.parent))
    record(workload, "fim" if backend == "fimfs" else backend, _median(times))
    shutil.rmtree(data, ignore_errors=True)


pytestmark = pytest.mark.skipif(os.geteuid() != 0 and not shutil.which("fusermount3"),
                                reason="needs FUSE")

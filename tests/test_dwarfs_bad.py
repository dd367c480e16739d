"""Malformed images: a clear error of the project's type, quickly, with bounded memory.

The 680 fuzzed images of testdata/dwarfs/bad are rejected through the API and by
``fim check --full``; hypothesis then mutates valid images (flipped bytes,
truncation, spliced sections, and metadata changed *with recomputed checksums*,
so the decoders behind the checksums are exercised too).
"""

import os
import resource
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fim.fimfs.dwarfs import DwarfsImage, sections
from fim.fimfs.errors import FimfsError

from .manifest import BAD_IMAGES, image_path

GiB = 1 << 30


def exercise(path: os.PathLike) -> str:
    """Open, check, walk and read everything; 'ok' or the one-line error."""
    try:
        with DwarfsImage.from_path(path) as img:
            problems = img.check(full=True)
            if problems:
                return problems[0]
            for p, e in img.walk():
                a = img.attr_of(e)
                if a.is_reg:
                    img.read_entry(e, a.size, 0)
                elif a.is_lnk:
                    img.readlink(p)
                elif a.is_dir:
                    img.readdir(p)
            return "ok"
    except FimfsError as e:
        return str(e)
    except OSError as e:  # a damaged block read: EIO, as through FUSE
        return f"{e.strerror}"


@pytest.mark.parametrize("path", BAD_IMAGES, ids=lambda p: p.stem[:8])
def test_bad_image_rejected_by_api(path) -> None:
    result = exercise(path)
    assert result != "ok"
    assert "\n" not in result and result


def _limited() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (GiB, GiB))


def _fim_check(path) -> tuple[int, str, str]:
    p = subprocess.run([sys.executable, "-m", "fim.cli.fim", "check", "--full", str(path)],
                       capture_output=True, text=True, timeout=5, preexec_fn=_limited)
    return p.returncode, p.stdout, p.stderr


@pytest.mark.slow
def test_fim_check_rejects_every_bad_image() -> None:
    """Each run: non-zero exit, one line on stderr, no traceback, < 5 s, < 1 GiB."""
    with ThreadPoolExecutor(os.cpu_count() or 2) as pool:
        results = list(pool.map(_fim_check, BAD_IMAGES))
    for path, (code, _out, err) in zip(BAD_IMAGES, results):
        assert code != 0, path
        assert "Traceback" not in err, (path, err)
        assert len(err.strip().splitlines()) == 1, (path, err)


# -- hypothesis: mutated valid images ----------------------------------------------------

SEEDS = ["compat-v0.2.0", "compat-v0.4.1", "compat-v0.9.10", "data", "unixlink"]
_SEED_BYTES = {n: image_path(n).read_bytes() for n in SEEDS}


def _resign(data: bytes, index: int, payload: bytes) -> bytes:
    """Replace the payload of section ``index`` and recompute its checksums."""
    out = bytearray()
    pos = 0
    i = 0
    while pos + 64 <= len(data):
        s = sections.parse_header(data[pos:pos + 64], pos)
        body = data[pos + 64:pos + 64 + s.length]
        if i == index:
            body = payload
        out += sections.pack_header(s.type, s.compression, s.number, body) + body
        pos += 64 + s.length
        i += 1
    return bytes(out)


def _sections_of(data: bytes) -> list[tuple[int, int, int]]:
    out, pos = [], 0
    while pos + 64 <= len(data):
        s = sections.parse_header(data[pos:pos + 64], pos)
        out.append((pos, s.type, s.length))
        pos += 64 + s.length
    return out


@st.composite
def mutated(draw) -> bytes:
    name = draw(st.sampled_from(SEEDS))
    data = bytearray(_SEED_BYTES[name])
    kind = draw(st.sampled_from(["flip", "truncate", "splice", "metadata"]))
    if kind == "flip":
        for _ in range(draw(st.integers(1, 8))):
            i = draw(st.integers(0, len(data) - 1))
            data[i] ^= draw(st.integers(1, 255))
    elif kind == "truncate":
        data = data[:draw(st.integers(0, len(data) - 1))]
    elif kind == "splice":
        a = draw(st.integers(0, len(data) - 1))
        b = draw(st.integers(a, len(data)))
        c = draw(st.integers(0, len(data)))
        data = data[:c] + data[a:b] + data[c:]
    elif name not in ("compat-v0.2.0",):  # 2.x: corrupt metadata/schema, re-sign
        secs = _sections_of(bytes(data))
        idx = draw(st.sampled_from([i for i, s in enumerate(secs) if s[1] in (7, 8)]))
        off, _, length = secs[idx]
        payload = bytearray(data[off + 64:off + 64 + length])
        for _ in range(draw(st.integers(1, 6))):
            j = draw(st.integers(0, len(payload) - 1))
            payload[j] = draw(st.integers(0, 255))
        data = bytearray(_resign(bytes(data), idx, bytes(payload)))
    return bytes(data)


@settings(max_examples=300, deadline=5000, suppress_health_check=[HealthCheck.too_slow])
@given(mutated())
def test_mutated_images_fail_cleanly(tmp_path_factory, data: bytes) -> None:
    p = tmp_path_factory.mktemp("mut") / "m.dwarfs"
    p.write_bytes(data)
    result = exercise(p)  # any exception other than FimfsError/OSError fails the test
    assert "\n" not in result

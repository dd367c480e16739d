"""`fim ls`, `cat`, `info`, `check` and the error handling of `fim` itself."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import subprocess
from pathlib import Path

import pytest

from fim.cli import fim
from fim.cli.tool import inspect as inspect_mod

from .manifest import BAD_IMAGES, DWARFS, MANIFEST_NAMES, image_path, load
from .test_extract import DEFAULT, FIM, TreeFS, _attr, d, f

HEADER = DWARFS / "native" / "header.dwarfs"


def run(capsysbinary, *argv: str) -> tuple[int, bytes, str]:
    code = fim.main([str(a) for a in argv])
    out, err = capsysbinary.readouterr()
    return code, out, err.decode()


def one_error_line(err: str) -> bool:
    return err.count("\n") == 1 and err.startswith("fim: ") and "Traceback" not in err


def children(manifest: list[dict], directory: str) -> list[str]:
    prefix = directory.rstrip("/") + "/"
    names = [e["path"][len(prefix) :] for e in manifest if e["path"].startswith(prefix)]
    return sorted((n for n in names if n and "/" not in n), key=os.fsencode)


# -- ls ----------------------------------------------------------------------------


def test_ls_root(capsysbinary) -> None:
    code, out, _ = run(capsysbinary, "ls", DEFAULT)
    assert code == 0
    assert out.decode().splitlines() == children(load("default"), "/")


def test_ls_a_file_and_a_missing_path(capsysbinary) -> None:
    assert run(capsysbinary, "ls", DEFAULT, "big.log")[:2] == (0, b"big.log\n")
    code, out, err = run(capsysbinary, "ls", DEFAULT, "/nope")
    assert (code, out, err) == (1, b"", "fim: /nope: No such file or directory\n")


def test_ls_follows_a_directory_symlink_named_on_the_command_line(capsysbinary) -> None:
    code, out, _ = run(capsysbinary, "ls", DEFAULT, "/links/dir-link")
    assert code == 0
    assert out.decode().splitlines() == children(load("default"), "/src/pkg0")


def test_ls_long(capsysbinary) -> None:
    code, out, _ = run(capsysbinary, "ls", "-l", DEFAULT, "/special")
    assert code == 0
    lines = {line.split()[-1]: line.split() for line in out.decode().splitlines()}
    assert lines["null"][0] == "crw-r--r--" and lines["null"][4:6] == ["1,", "3"]
    assert lines["loop9"][0] == "brw-r-----" and lines["loop9"][4:6] == ["7,", "9"]
    assert lines["fifo"][0] == "prw-r--r--"
    assert lines["sock"][0] == "srwxr-xr-x"

    out = run(capsysbinary, "ls", "-l", DEFAULT, "/links")[1].decode()
    assert any(line.endswith(" rel-link -> hard-a") for line in out.splitlines())
    hard = next(line.split() for line in out.splitlines() if line.endswith(" hard-a"))
    assert hard[:5] == ["-rw-r-----", "3", "1001", "101", "1896"]

    out = run(capsysbinary, "ls", "-l", DEFAULT, "/perms")[1].decode()
    modes = {line.split()[-1]: line.split()[0] for line in out.splitlines()}
    assert modes["sticky"] == "drwxrwxrwt" and modes["noread"] == "----------"


def test_ls_long_special_bits_and_byte_names(capsysbinary, monkeypatch) -> None:
    fs = TreeFS(
        {
            "/": d(1, ["suid", "sgid", "sticky", os.fsdecode(b"bad\xff\nname")]),
            "/suid": f(2, b"x", perm=0o4755),
            "/sgid": f(3, b"x", perm=0o2644),
            "/sticky": d(4, [], perm=0o1750),
            os.fsdecode(b"/bad\xff\nname"): f(5, b""),
        }
    )
    monkeypatch.setattr(inspect_mod, "open_dwarfs", lambda args: fs)
    code, out, _ = run(capsysbinary, "ls", "-l", "image")
    assert code == 0
    for mode in (b"-rwsr-xr-x ", b"-rw-r-Sr-- ", b"drwxr-x--T ", b"-rw-r--r-- "):
        assert mode in out
    assert b" bad\xff\nname\n" in out  # raw bytes: not a TTY, so no "?" escaping


def test_ls_recursive(capsysbinary) -> None:
    manifest = load("default")
    code, out, _ = run(capsysbinary, "ls", "-R", DEFAULT)
    assert code == 0
    lines = out.decode().splitlines()
    headers = [line[:-1] for line in lines if line.startswith("/") and line.endswith(":")]
    dirs = {e["path"] for e in manifest if e["type"] == "dir"}
    expected, pending = [], ["/"]  # ls -R order: depth first, names sorted
    while pending:
        top = pending.pop()
        expected.append(top)
        subdirs = [f"{top.rstrip('/')}/{n}" for n in children(manifest, top)]
        pending.extend(reversed([p for p in subdirs if p in dirs]))
    assert headers == expected
    names = [x for x in lines if x and not (x.startswith("/") and x.endswith(":"))]
    assert len(names) == len(manifest) - 1


@pytest.mark.parametrize("name", MANIFEST_NAMES)
def test_ls_json_matches_manifest(name: str, capsysbinary) -> None:
    code, out, _ = run(capsysbinary, "ls", "--json", "-R", image_path(name))
    assert code == 0
    got = {e["path"]: e for e in json.loads(out)}
    manifest = [e for e in load(name) if e["path"] != "/"]
    assert sorted(got) == sorted(e["path"] for e in manifest)
    for e in manifest:
        g = got[e["path"]]
        assert g["type"] == e["type"], e["path"]
        assert oct(g["mode"]) == oct(int(e["mode"], 8)), e["path"]
        assert (g["uid"], g["gid"], g["mtime"]) == (e["uid"], e["gid"], e["mtime"]), e["path"]
        assert g["nlink"] == e.get("nlink", g["nlink"]), e["path"]
        assert g["size"] == e.get("size", g["size"]), e["path"]
        assert g["target"] == e.get("target"), e["path"]
        if "rdev_major" in e:
            assert g["rdev"] == {"major": e["rdev_major"], "minor": e["rdev_minor"]}
        else:
            assert g["rdev"] is None


# -- cat ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", MANIFEST_NAMES)
def test_cat_matches_manifest(name: str, capsysbinary) -> None:
    files = [e for e in load(name) if e["type"] == "file" and e["size"] < 5 << 20]
    for e in files[:25]:
        code, out, err = run(capsysbinary, "cat", image_path(name), e["path"])
        assert (code, err) == (0, "")
        assert hashlib.sha256(out).hexdigest() == e["sha256"], e["path"]


def test_cat_follows_symlinks(capsysbinary) -> None:
    hard = run(capsysbinary, "cat", DEFAULT, "/links/hard-a")[1]
    assert run(capsysbinary, "cat", DEFAULT, "/links/rel-link")[1] == hard
    code, out, _ = run(capsysbinary, "cat", DEFAULT, "/links/dir-link/../../big.log")
    assert code == 0 and len(out) == 1735725


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("/links", "/links: Is a directory"),
        ("/nope", "/nope: No such file or directory"),
        ("/big.log/x", "/big.log/x: Not a directory"),
        ("/special/fifo", "/special/fifo: not a regular file (fifo)"),
        ("/links/dangling", "/links/dangling: No such file or directory"),
    ],
)
def test_cat_errors(path: str, message: str, capsysbinary) -> None:
    assert run(capsysbinary, "cat", DEFAULT, path) == (1, b"", f"fim: {message}\n")


def test_cat_into_a_closed_pipe_is_quiet() -> None:
    with subprocess.Popen(
        [FIM, "cat", DEFAULT, "/sparse.img"], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    ) as proc:
        assert proc.stdout is not None and proc.stderr is not None
        proc.stdout.read(100)
        proc.stdout.close()
        err = proc.stderr.read()
        assert proc.wait(timeout=120) != 0
    assert err == b""


# -- info and check ----------------------------------------------------------------


def test_info_json(capsysbinary) -> None:
    code, out, _ = run(capsysbinary, "info", "--json", DEFAULT)
    assert code == 0
    info = json.loads(out)
    for key in ("format_version", "image_offset", "sections", "blocks", "inodes_by_type"):
        assert key in info
    assert (info["format_version"], info["image_offset"]) == ("2.5", 0)  # mkdwarfs 0.15.3
    assert info["inodes_by_type"]["socket"] == 1 and "sparsefiles" in info["features"]
    assert {s["type"] for s in info["sections"]} >= {"BLOCK", "METADATA_V2", "HISTORY"}
    for options in ([], ["-o", "offset=39"]):
        code, out, _ = run(capsysbinary, "info", "--json", HEADER, *options)
        assert code == 0 and json.loads(out)["image_offset"] == 39


def test_info_text(capsysbinary) -> None:
    code, out, _ = run(capsysbinary, "info", DEFAULT)
    text = out.decode()
    assert code == 0
    assert "format:       DwarFS 2.5" in text and "features:     sparsefiles" in text
    assert "METADATA_V2_SCHEMA" in text and "mkdwarfs" in text  # sections and history


@pytest.mark.parametrize("name", MANIFEST_NAMES)
def test_check_good_images(name: str, capsysbinary) -> None:
    code, out, err = run(capsysbinary, "check", image_path(name))
    assert (code, err) == (0, "")
    assert out.decode().splitlines()[-1].endswith("no problems found")


@pytest.mark.parametrize("image", [DEFAULT, DWARFS / "compat" / "compat-v0.2.0.dwarfs"])
def test_check_full_good_images(image: Path, capsysbinary) -> None:
    assert run(capsysbinary, "check", "--full", image)[:1] == (0,)


# A sample only: the exhaustive test over every bad image is in test_dwarfs_bad.py.
SAMPLE = BAD_IMAGES[:: max(1, len(BAD_IMAGES) // 20)][:20]


@pytest.mark.parametrize("image", SAMPLE, ids=lambda p: p.stem[:8])
def test_check_full_bad_images_sample(image: Path) -> None:
    proc = subprocess.run(
        [FIM, "check", "--full", image], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode != 0
    assert one_error_line(proc.stderr), proc.stderr
    assert "internal error" not in proc.stderr


def test_future_features_check(capsysbinary) -> None:
    code, _, err = run(capsysbinary, "check", DWARFS / "future-features.dwarfs")
    assert code == 1 and one_error_line(err) and "this-feature-will-never-exist" in err


# -- image options -----------------------------------------------------------------


def test_header_image_offsets(capsysbinary) -> None:
    expected = children(load("header"), "/")
    for options in ([], ["-o", "offset=auto"], ["-o", "offset=39"], ["-ooffset=39,cachesize=1m"]):
        code, out, _ = run(capsysbinary, "ls", HEADER, *options)
        assert (code, out.decode().splitlines()) == (0, expected), options
    code, out, err = run(capsysbinary, "ls", HEADER, "-o", "offset=0")
    assert code == 1 and out == b"" and one_error_line(err)


@pytest.mark.parametrize(
    "argv",
    [[], ["ls"], ["ls", DEFAULT, "-o", "bogus=1"], ["ls", DEFAULT, "-o", "offset=-1"], ["nope"]],
)
def test_usage_errors(argv: list, capsysbinary) -> None:
    code, out, err = run(capsysbinary, *argv)
    assert code == 2 and out == b"" and "usage: fim" in err


def test_help_lists_the_commands(capsysbinary) -> None:
    code, out, _ = run(capsysbinary, "--help")
    assert code == 0
    for command in ("ls", "cat", "info", "check", "extract", "mount", "umount"):
        assert f"    {command} " in out.decode()


def test_missing_image(capsysbinary, tmp_path: Path) -> None:
    missing = tmp_path / "missing.dwarfs"
    code, _, err = run(capsysbinary, "ls", missing)
    assert code == 1 and one_error_line(err) and str(missing) in err


# -- error reporting of fim itself ------------------------------------------------------


def test_interrupt_and_internal_errors(capsysbinary, monkeypatch) -> None:
    def interrupted(args):
        raise KeyboardInterrupt

    def buggy(args):
        raise ValueError("boom")

    monkeypatch.setattr(inspect_mod, "open_dwarfs", interrupted)
    assert run(capsysbinary, "ls", "image") == (130, b"", "fim: interrupted\n")
    monkeypatch.setattr(inspect_mod, "open_dwarfs", buggy)
    code, _, err = run(capsysbinary, "ls", "image")
    assert code == 1 and one_error_line(err) and "internal error: ValueError: boom" in err


def test_traceback_only_with_fim_debug() -> None:
    argv = [FIM, "cat", DEFAULT, "/nope"]
    quiet = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    env = {**os.environ, "FIM_DEBUG": "1"}
    loud = subprocess.run(argv, capture_output=True, text=True, timeout=60, env=env)
    assert quiet.returncode == loud.returncode == 1
    assert quiet.stderr == "fim: /nope: No such file or directory\n"
    assert "Traceback" in loud.stderr and loud.stderr.endswith(quiet.stderr)


def test_ls_long_device(capsysbinary, monkeypatch) -> None:
    """`ls -l` of a device shows major, minor where the size would be."""
    fs = TreeFS(
        {"/": d(1, ["tty"]), "/tty": (_attr(stat.S_IFCHR, 0o620, 2, rdev=os.makedev(4, 1)), None)}
    )
    monkeypatch.setattr(inspect_mod, "open_dwarfs", lambda args: fs)
    code, out, _ = run(capsysbinary, "ls", "-l", "image")
    assert code == 0 and out.split()[:6] == [b"crw--w----", b"1", b"1234", b"5678", b"4,", b"1"]

"""The benchmark corpus: about 530 MB of real files a Debian machine has.

What a container root is mostly made of: Python's standard library
(/usr/lib/python3.11), /usr/share/doc, /usr/share/locale (many small files), and big
shared libraries (libLLVM-15, libicu), each up to a byte budget, copied once into
bench/.cache/corpus/ with modes, times and symlinks kept (issue 13's corpus). A
marker file records what was copied, so later runs reuse it. Run
``python -m bench.corpus`` to build it and print its size.
"""

from __future__ import annotations

import fnmatch
import json
import os
import shutil
import stat
import sysconfig
from pathlib import Path

CACHE = Path(__file__).resolve().parent / ".cache"
CORPUS = CACHE / "corpus"
_MARKER = CACHE / "corpus.json"
_SKIP_DIRS = {"site-packages", "dist-packages"}


def _sources() -> list[tuple[Path, str, int, str]]:
    """(host directory, name inside the corpus, byte budget, file name pattern)."""
    stdlib = Path("/usr/lib/python3.11")
    if not stdlib.is_dir():
        stdlib = Path(sysconfig.get_paths()["stdlib"])
    libs = Path("/usr/lib") / sysconfig.get_config_var("MULTIARCH") if \
        sysconfig.get_config_var("MULTIARCH") else Path("/usr/lib")
    return [(stdlib, "python3.11", 200 << 20, "*"),
            (Path("/usr/share/doc"), "usr-share-doc", 200 << 20, "*"),
            (Path("/usr/share/locale"), "usr-share-locale", 200 << 20, "*"),
            (libs, "libs", 200 << 20, "lib[Li][Lc][Vu]*")]


def _copy_tree(src: Path, dst: Path, budget: int, pattern: str) -> int:
    """Copy regular files, dirs and symlinks under ``src`` in name order until
    ``budget`` bytes of file data (with ``pattern``: the top level's files matching it,
    no subdirectories); returns the bytes copied."""
    used = 0
    for dirpath, dirnames, filenames in os.walk(src):
        if pattern != "*":
            filenames = fnmatch.filter(filenames, pattern)
            dirnames.clear()
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS)
        rel = Path(dirpath).relative_to(src)
        (dst / rel).mkdir(parents=True, exist_ok=True)
        for name in sorted(filenames) + [d for d in dirnames if (Path(dirpath, d)).is_symlink()]:
            s, d = Path(dirpath, name), dst / rel / name
            try:
                st = s.lstat()
                if stat.S_ISLNK(st.st_mode):
                    os.symlink(os.readlink(s), d)
                elif stat.S_ISREG(st.st_mode) and used + st.st_size <= budget:
                    shutil.copy2(s, d)
                    used += st.st_size
            except OSError:
                continue  # unreadable or vanished: not part of the corpus
        if used >= budget:
            break
    return used


def build() -> Path:
    """The corpus directory, built on first use."""
    want = [[str(s), name, budget, pattern] for s, name, budget, pattern in _sources()]
    if _MARKER.exists() and json.loads(_MARKER.read_text()).get("sources") == want:
        return CORPUS
    shutil.rmtree(CORPUS, ignore_errors=True)
    CORPUS.mkdir(parents=True)
    total = 0
    for s, name, budget, pattern in _sources():
        if s.is_dir():
            total += _copy_tree(s, CORPUS / name, budget, pattern)
    _MARKER.write_text(json.dumps({"sources": want, "bytes": total}))
    return CORPUS


def describe() -> dict:
    """Size and entry count of the built corpus."""
    files = entries = 0
    for _, dirnames, filenames in os.walk(CORPUS):
        entries += len(dirnames) + len(filenames)
        files += len(filenames)
    return {"path": str(CORPUS), "entries": entries, "files": files,
            "bytes": json.loads(_MARKER.read_text())["bytes"]}


if __name__ == "__main__":
    build()
    print(json.dumps(describe(), indent=2))

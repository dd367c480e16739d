"""Many threads reading one image at once get the right bytes (small cache: evictions)."""

import os
import random
from concurrent.futures import ThreadPoolExecutor

from fim.fimfs.dwarfs import DwarfsImage

from .manifest import image_path


def test_concurrent_random_reads_are_correct() -> None:
    path = image_path("small-blocks")  # 16 KiB blocks: reads cross many blocks
    with DwarfsImage.from_path(path) as ref:
        files = {p: ref.read_entry(e, ref.attr_of(e).size, 0)
                 for p, e in ref.walk() if ref.attr_of(e).is_reg and ref.attr_of(e).size}
    names = sorted(files)
    with DwarfsImage.from_path(path, cache_bytes=64 << 10) as img:  # 4 blocks of cache

        def worker(seed: int) -> int:
            rnd = random.Random(seed)
            done = 0
            for _ in range(100):
                p = rnd.choice(names)
                want = files[p]
                off = rnd.randrange(len(want))
                size = rnd.choice([1, 4096, 65536, 1 << 20])
                fh = img.open(p, os.O_RDONLY)
                try:
                    assert img.read(p, size, off, fh) == want[off:off + size], (p, off, size)
                finally:
                    img.release(p, fh)
                done += 1
            return done

        with ThreadPoolExecutor(16) as pool:
            assert sum(pool.map(worker, range(16))) == 16 * 100


def test_concurrent_sequential_readers_with_prefetch() -> None:
    path = image_path("small-blocks")
    with DwarfsImage.from_path(path) as img:
        big = max((e for _, e in img.walk() if img.attr_of(e).is_reg),
                  key=lambda e: img.attr_of(e).size)
        want = img.read_entry(big, img.attr_of(big).size, 0)
    with DwarfsImage.from_path(path, cache_bytes=128 << 10) as img:
        fpath = next(p for p, e in img.walk() if e == big)

        def reader(_: int) -> bytes:
            fh = img.open(fpath, os.O_RDONLY)
            out, off = [], 0
            while chunk := img.read(fpath, 7000, off, fh):
                out.append(chunk)
                off += len(chunk)
            img.release(fpath, fh)
            return b"".join(out)

        with ThreadPoolExecutor(8) as pool:
            assert all(r == want for r in pool.map(reader, range(8)))

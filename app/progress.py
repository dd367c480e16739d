"""Progress of writing a DwarFS image on a terminal (`fim create`, `fim build`, layer commits)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fim.fimfs.dwarfs.writer import Progress


class ProgressBar:
    """tqdm progress on a TTY: entries while scanning, bytes while hashing and writing."""

    def __init__(self) -> None:
        self.bar: Any = None  # a tqdm, imported when first drawn
        self.phase = ""

    def __call__(self, p: Progress) -> None:
        from tqdm import tqdm

        if p.phase != self.phase:
            self.close()
            self.phase = p.phase
            if p.phase == "scan":
                self.bar = tqdm(desc="scanning", unit=" entries", leave=False)
            else:
                self.bar = tqdm(desc="hashing" if p.phase == "hash" else "writing",
                                total=p.bytes_total or None, unit="B", unit_scale=True,
                                unit_divisor=1024, leave=False)
        bar = self.bar
        bar.n = p.files if p.phase == "scan" else p.bytes
        if p.phase == "write":
            bar.set_postfix_str(f"{p.files}/{p.files_total} files, ratio {p.ratio:.1%}",
                                refresh=False)
        bar.update(0)  # redraws when tqdm's refresh interval has passed

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

"""Shared by the benchmarks: each owns one marked section of docs/BENCHMARKS.md."""

from __future__ import annotations

from pathlib import Path


def write_section(path: Path, markers: tuple[str, str], text: str) -> None:
    """Replace (or append) the section between `markers`, leaving other sections alone."""
    current = path.read_text() if path.exists() else "# Benchmarks\n"
    block = f"{markers[0]}\n{text.strip()}\n{markers[1]}"
    if markers[0] in current:
        head, rest = current.split(markers[0], 1)
        current = head + block + rest.split(markers[1], 1)[1]
    else:
        current = current.rstrip() + "\n\n" + block + "\n"
    path.write_text(current)

"""Files that survive a crash: written under a hidden temporary name beside the final one, flushed to disk, then
renamed over it. A reader, or the next run, sees the old file or the new one, never part of one, even after a
power cut (without the fsync the rename can reach the disk before the data does)."""

from __future__ import annotations

import contextlib
import json
import os
import uuid
from pathlib import Path
from typing import IO, Iterator


def fsync_dir(path: Path) -> None:
    """Make the names in a directory (a file renamed into it) durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(path: Path) -> None:
    """Flush a file, or every file and folder below a folder, to disk."""
    if path.is_dir():
        for child in path.iterdir():
            fsync_tree(child)
        fsync_dir(path)
        return
    with open(path, "rb") as file:
        os.fsync(file.fileno())


def move_into_place(src: Path, dst: Path) -> None:
    """Rename a finished file or folder to its final name, its contents on disk before the name is."""
    fsync_tree(src)
    os.replace(src, dst)
    fsync_dir(dst.parent)


@contextlib.contextmanager
def replacing(path: Path, mode: str = "w") -> Iterator[IO]:
    """An open file that becomes `path` when the block ends; if the block fails, `path` is left as it was."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")  # unique: two writers never share one
    try:
        with open(tmp, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as file:
            yield file
        move_into_place(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text(path: Path, text: str) -> None:
    with replacing(path) as file:
        file.write(text)


def write_json(path: Path, data: dict) -> None:
    write_text(path, json.dumps(data, indent=2, default=str) + "\n")


def save_figure(figure, path: Path) -> None:
    """A matplotlib figure saved as `path` (format from its suffix)."""
    with replacing(path, "wb") as file:
        figure.savefig(file, format=path.suffix.lstrip("."))

"""Where an export is written: a directory that is complete or absent, never half-written, never silently replaced."""

from __future__ import annotations

import json
import shutil
import uuid
from pathlib import Path
from typing import Callable

from ecombot.atomic import move_into_place
from ecombot.errors import EcombotError

RECORD = "ecombot_export.json"  # what was exported from which run, version and base; written in every export
GEMMA_TERMS = "Weights derived from Gemma are under the Gemma terms of use: https://ai.google.dev/gemma/terms"


def build_export(output: str | Path, overwrite: bool, fill: Callable[[Path], dict],
                 usage: Callable[[dict], str]) -> dict:
    """`fill(folder)` writes the export's files into an empty folder beside `output` and returns its record; the
    record and a README.md (`usage(record)`) are added and the folder is renamed into place only once complete.
    A non-empty `output` is refused before any work unless `overwrite`."""
    output = Path(output)
    if output.exists() and (not output.is_dir() or any(output.iterdir())) and not overwrite:
        raise EcombotError(f"{output} exists and is not empty; choose another --output or pass --overwrite")
    output.parent.mkdir(parents=True, exist_ok=True)
    building = output.parent / f".{output.name}.tmp-{uuid.uuid4().hex[:8]}"
    building.mkdir()
    try:
        record = fill(building)
        (building / RECORD).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        (building / "README.md").write_text(usage(record), encoding="utf-8")
        if output.exists():
            shutil.rmtree(output) if output.is_dir() else output.unlink()
        move_into_place(building, output)
    finally:
        shutil.rmtree(building, ignore_errors=True)
    return {**record, "output": str(output)}

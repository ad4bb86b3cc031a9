"""Write-then-rename files: on disk before their name is, and an interrupted write leaves the old file."""

import json
import os

import pytest

from ecombot import atomic


def test_a_file_is_on_disk_before_it_takes_its_name(tmp_path, monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def replace(src, dst):
        events.append(("replace", str(src), str(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    path = tmp_path / "run_config.json"
    atomic.write_json(path, {"status": "complete"})
    (_, written), (_, renamed, name), (_, folder) = events  # the data, then the name, then the folder's entry
    assert written == renamed and name == str(path) and folder == str(tmp_path)


def test_an_interrupted_write_leaves_the_old_file_and_no_temporary_one(tmp_path):
    path = tmp_path / "data.json"
    atomic.write_json(path, {"version": 1})
    with pytest.raises(KeyboardInterrupt), atomic.replacing(path) as file:
        file.write('{"version": ')
        raise KeyboardInterrupt
    assert json.loads(path.read_text()) == {"version": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["data.json"]

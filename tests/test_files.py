"""looper/files.py: whole files or none, on a real file system."""

from __future__ import annotations

import os
import stat

import pytest

from looper import files
from looper.files import write_atomically, write_many_atomically


def test_a_file_replaced_whole_with_its_mode_and_no_temporary_left(tmp_path):
    path = tmp_path / "state.json"
    path.write_bytes(b"old")
    write_atomically(path, b"new", mode=0o600)
    assert path.read_bytes() == b"new"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert os.listdir(tmp_path) == ["state.json"]


def test_a_batch_larger_than_the_open_files_allowed_is_written_whole(tmp_path):
    batch = [(str(tmp_path / f"{n:04d}.eml"), b"message %d\r\n" % n * (n + 1)) for n in range(files.MAX_OPEN_FILES * 2 + 5)]
    assert write_many_atomically(batch, mode=0o600) == [None] * len(batch)
    for path, data in batch:
        assert open(path, "rb").read() == data
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert sorted(os.listdir(tmp_path)) == sorted(os.path.basename(p) for p, _ in batch)  # no temporaries


def test_a_file_that_cannot_be_written_fails_alone(tmp_path):
    batch = [(str(tmp_path / "a.eml"), b"a"), (str(tmp_path / "missing" / "b.eml"), b"b"), (str(tmp_path / "c.eml"), b"c")]
    outcomes = write_many_atomically(batch)
    assert outcomes[0] is None and outcomes[2] is None
    assert isinstance(outcomes[1], FileNotFoundError)
    assert sorted(os.listdir(tmp_path)) == ["a.eml", "c.eml"]


def test_a_failed_sync_fails_its_file_which_never_gets_its_name(tmp_path, monkeypatch):
    real_fsync = os.fsync
    synced = []

    def fsync(fd):
        synced.append(fd)
        if len(synced) == 2:
            raise OSError(5, "Input/output error")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    batch = [(str(tmp_path / f"{n}.eml"), b"%d" % n) for n in range(3)]
    outcomes = write_many_atomically(batch)
    assert [o is None for o in outcomes] == [True, False, True] and outcomes[1].errno == 5
    assert sorted(os.listdir(tmp_path)) == ["0.eml", "2.eml"]  # and no temporary of the failed one


def test_a_bug_mid_batch_leaves_no_temporary_behind(tmp_path, monkeypatch):
    real_replace = os.replace

    def replace(source, target):
        if target.endswith("1.eml"):
            raise RuntimeError("a bug")
        real_replace(source, target)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(RuntimeError):
        write_many_atomically([(str(tmp_path / f"{n}.eml"), b"x") for n in range(4)])
    assert os.listdir(tmp_path) == ["0.eml"]

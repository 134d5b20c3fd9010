"""looper/files.py: whole files or none, on a real file system."""

from __future__ import annotations

import errno
import os
import stat

import pytest

from looper import files
from looper.files import create_many, write_atomically

UNNAMED_FILES = files._unnamed_files  # this system's: O_TMPFILE and /proc/self/fd


@pytest.fixture(params=["unnamed", "named"])
def way(request, monkeypatch):
    """create_many's two ways: files made without a name, or with a temporary one."""
    if request.param == "unnamed" and not UNNAMED_FILES:
        pytest.skip("no O_TMPFILE or /proc/self/fd here")
    monkeypatch.setattr(files, "_unnamed_files", request.param == "unnamed")
    return request.param


def test_a_file_replaced_whole_with_its_mode_and_no_temporary_left(tmp_path):
    path = tmp_path / "state.json"
    path.write_bytes(b"old")
    write_atomically(path, b"new", mode=0o600)
    assert path.read_bytes() == b"new"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert os.listdir(tmp_path) == ["state.json"]


def test_a_batch_larger_than_the_open_files_allowed_is_created_whole(tmp_path, way):
    batch = [(f"{n:04d}.eml", b"message %d\r\n" % n * (n + 1)) for n in range(files.MAX_OPEN_FILES * 2 + 5)]
    assert create_many(str(tmp_path), batch, mode=0o600) == [None] * len(batch)
    for name, data in batch:
        assert (tmp_path / name).read_bytes() == data
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o600
    assert sorted(os.listdir(tmp_path)) == [name for name, _ in batch]  # no temporary names
    assert files._unnamed_files == (way == "unnamed")


def test_a_name_that_exists_is_left_as_it_is(tmp_path, way):
    (tmp_path / "there.eml").write_bytes(b"first")
    outcomes = create_many(str(tmp_path), [("there.eml", b"second"), ("new.eml", b"new")])
    assert isinstance(outcomes[0], FileExistsError) and outcomes[1] is None
    assert (tmp_path / "there.eml").read_bytes() == b"first"
    assert sorted(os.listdir(tmp_path)) == ["new.eml", "there.eml"]
    assert files._unnamed_files == (way == "unnamed")  # an existing name is no reason to stop making unnamed files


def test_a_file_that_cannot_be_created_fails_alone(tmp_path, way):
    outcomes = create_many(str(tmp_path), [("a.eml", b"a"), ("missing/b.eml", b"b"), ("c.eml", b"c")])
    assert outcomes[0] is None and outcomes[2] is None
    assert isinstance(outcomes[1], FileNotFoundError)
    assert sorted(os.listdir(tmp_path)) == ["a.eml", "c.eml"]
    assert files._unnamed_files == (way == "unnamed")  # a bad name says nothing of the system


def test_a_folder_that_is_not_there_fails_every_file(tmp_path):
    outcomes = create_many(str(tmp_path / "gone"), [("a.eml", b"a"), ("b.eml", b"b")])
    assert [type(o) for o in outcomes] == [FileNotFoundError, FileNotFoundError]


def test_a_failed_sync_fails_its_file_which_never_gets_its_name(tmp_path, monkeypatch, way):
    real_fsync = os.fsync
    synced = []

    def fsync(fd):
        synced.append(fd)
        if len(synced) == 2:
            raise OSError(errno.EIO, "Input/output error")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    outcomes = create_many(str(tmp_path), [(f"{n}.eml", b"%d" % n) for n in range(3)])
    assert [o is None for o in outcomes] == [True, False, True] and outcomes[1].errno == errno.EIO
    assert sorted(os.listdir(tmp_path)) == ["0.eml", "2.eml"]  # and no temporary of the failed one


def test_a_bug_mid_batch_leaves_no_temporary_behind(tmp_path, monkeypatch, way):
    real_link = os.link

    def link(source, target, **kw):
        if target == "1.eml":
            raise RuntimeError("a bug")
        real_link(source, target, **kw)

    monkeypatch.setattr(os, "link", link)
    with pytest.raises(RuntimeError):
        create_many(str(tmp_path), [(f"{n}.eml", b"x") for n in range(4)])
    assert os.listdir(tmp_path) == ["0.eml"]


@pytest.mark.skipif(not UNNAMED_FILES, reason="no O_TMPFILE or /proc/self/fd here")
def test_a_file_system_without_unnamed_files_gets_named_temporaries(tmp_path, monkeypatch):
    real_open = os.open
    monkeypatch.setattr(files, "_unnamed_files", True)

    def open_(path, flags, *args, **kw):
        if flags & os.O_TMPFILE == os.O_TMPFILE:
            raise OSError(errno.EOPNOTSUPP, "Operation not supported")
        return real_open(path, flags, *args, **kw)

    monkeypatch.setattr(os, "open", open_)
    assert create_many(str(tmp_path), [("a.eml", b"a"), ("b.eml", b"b")]) == [None, None]
    assert files._unnamed_files is False
    assert sorted(os.listdir(tmp_path)) == ["a.eml", "b.eml"]
    assert (tmp_path / "b.eml").read_bytes() == b"b"


@pytest.mark.skipif(not UNNAMED_FILES, reason="no O_TMPFILE or /proc/self/fd here")
def test_unnamed_files_that_cannot_be_linked_are_made_again_with_names(tmp_path, monkeypatch):
    """/proc/self/fd refused (a hardened /proc, say): the files are made
    again with temporary names, and so is every file after them."""
    real_link = os.link
    monkeypatch.setattr(files, "_unnamed_files", True)

    def link(source, target, **kw):
        if str(source).startswith("/proc/self/fd/"):
            raise PermissionError(errno.EPERM, "Operation not permitted")
        real_link(source, target, **kw)

    monkeypatch.setattr(os, "link", link)
    assert create_many(str(tmp_path), [("a.eml", b"a"), ("b.eml", b"b")]) == [None, None]
    assert files._unnamed_files is False
    assert create_many(str(tmp_path), [("c.eml", b"c")]) == [None]
    assert sorted(os.listdir(tmp_path)) == ["a.eml", "b.eml", "c.eml"]
    assert [(tmp_path / n).read_bytes() for n in ("a.eml", "b.eml", "c.eml")] == [b"a", b"b", b"c"]

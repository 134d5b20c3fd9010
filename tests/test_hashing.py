"""SHA-256 off the forwarding thread (looper/net/hashing.py): the same
digest as hashlib for any split of any content, even when the buffer it was
fed from is reused at once, with many hashes sharing the worker."""

from __future__ import annotations

import hashlib
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from looper.net import hashing
from looper.net.hashing import OffloadedSha256

SIZES = st.one_of(st.integers(min_value=0, max_value=3 * hashing.OFFLOAD_BYTES),
                  st.integers(min_value=hashing.MAX_OUTSTANDING_BYTES, max_value=2 * hashing.MAX_OUTSTANDING_BYTES))


@settings(max_examples=40, deadline=None)
@given(st.binary(max_size=64), st.lists(SIZES, max_size=40), st.integers(min_value=0, max_value=2**32))
def test_the_digest_is_hashlib_s_whatever_the_split(start, sizes, seed):
    content = hashlib.shake_256(seed.to_bytes(8, "big")).digest(sum(sizes))
    offloaded, reference = OffloadedSha256(start), hashlib.sha256(start)
    reused = bytearray(max(sizes, default=0))
    position = 0
    for size in sizes:
        reused[:size] = content[position : position + size]
        offloaded.update(memoryview(reused)[:size])
        reference.update(content[position : position + size])
        reused[:size] = b"\xff" * size  # the read buffer, reused by the next read
        position += size
    assert offloaded.hexdigest() == reference.hexdigest()


def test_many_hashes_share_the_worker_and_memory_stays_bounded():
    chunk = bytes(range(256)) * 1024  # 256 KiB
    hashes = [OffloadedSha256() for _ in range(40)]
    for _ in range(8):  # 40 x 2 MiB: more than the worker may hold queued
        for offloaded in hashes:
            offloaded.update(chunk)
            assert hashing._worker.queued_bytes <= hashing.MAX_QUEUED_BYTES
            assert offloaded._outstanding <= hashing.MAX_OUTSTANDING_BYTES
    expected = hashlib.sha256(chunk * 8).hexdigest()
    assert all(offloaded.hexdigest() == expected for offloaded in hashes)
    assert hashing._worker.queued_bytes == 0


# Forking a process with threads is the very case: 3.12+ warns of it.
@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_a_forked_child_hashes_with_its_own_worker():
    chunk = bytes(range(256)) * 1024
    parent = OffloadedSha256()
    parent.update(chunk)  # the parent's worker thread is running now
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: no worker thread came with the fork
        try:
            child = OffloadedSha256()
            for _ in range(4):
                child.update(chunk)
            os.write(write_end, child.hexdigest().encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        got = pipe.read().decode()
    os.waitpid(pid, 0)
    assert got == hashlib.sha256(chunk * 4).hexdigest()
    assert parent.hexdigest() == hashlib.sha256(chunk).hexdigest()

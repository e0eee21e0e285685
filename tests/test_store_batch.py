"""A fleet shard's updates are written as one batch (issue 20): the same journaled write per object,
but one sync of the batch's files and one fsync per directory instead of four fsyncs per update,
and a batch that fails before its commits leaves every old object whole and no temporary file."""

from __future__ import annotations

import errno
import os
import sys
from pathlib import Path

import numpy as np
import pytest

from fedtwin.core.errors import StoreError
from fedtwin.federation.updates import UpdateRecord, parse_updates, write_updates
from fedtwin.policy.layout import LayoutError, PolicySpec, params_from_bytes, params_to_bytes
from fedtwin.store import LocalStore, RunLayout, sha256_hex
from fedtwin.store import local as local_store

SPEC = PolicySpec("actor_critic", (8, 8))
LAYOUT = RunLayout("batch")


def _updates(count: int, size: int) -> list[tuple[UpdateRecord, bytes]]:
    rng = np.random.default_rng(0)
    return [(UpdateRecord(twin_id=f"twin-{i:03d}", round=0, num_samples=8, sha256="", base_sha256=""),
             params_to_bytes(rng.standard_normal(size).astype(np.float32), SPEC)) for i in range(count)]


def _size() -> int:
    from fedtwin.policy.layout import layout_for

    return layout_for(SPEC).size


@pytest.mark.skipif(sys.platform != "linux", reason="syncfs(2) is Linux's; elsewhere each file is fsynced")
def test_a_batch_of_updates_is_synced_once_and_reads_back(tmp_path: Path, monkeypatch) -> None:
    store = LocalStore(tmp_path)
    calls = {"fsync": 0, "syncfs": 0}
    real_fsync, real_syncfs = os.fsync, local_store._syncfs

    def fsync(fd: int) -> None:
        calls["fsync"] += 1
        real_fsync(fd)

    def syncfs(directory: Path) -> bool:
        calls["syncfs"] += 1
        return real_syncfs(directory)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(local_store, "_syncfs", syncfs)
    updates = _updates(50, _size())
    records = write_updates(store, LAYOUT, updates)

    assert calls == {"fsync": 1, "syncfs": 1}  # the 200 new files, then the updates directory
    for record, weights in updates:
        assert store.get_bytes(LAYOUT.update_weights(0, record.twin_id)) == weights
        assert UpdateRecord.from_json(store.get_json(LAYOUT.update_meta(0, record.twin_id))) == record
    assert [r.sha256 for r in records] == [sha256_hex(w) for _, w in updates]
    assert not [p for p in tmp_path.rglob(".*") if p.is_file()]  # no pending or temporary file left


def test_a_batch_that_fails_before_its_commits_leaves_the_old_objects(tmp_path: Path, monkeypatch) -> None:
    store = LocalStore(tmp_path)
    store.put_bytes("d/a", b"old a")
    made = []
    real = local_store._write_new

    def disk_full_on_the_third(path: Path, data: bytes) -> None:
        if len(made) == 2:
            with open(path, "wb") as torn:  # created, then the disk fills up
                torn.write(data[:1])
            raise OSError(errno.ENOSPC, "No space left on device")
        made.append(path)
        real(path, data)

    monkeypatch.setattr(local_store, "_write_new", disk_full_on_the_third)
    with pytest.raises(StoreError, match="no space left on device"):
        store.put_many([("d/a", b"new a"), ("d/b", b"new b"), ("d/c", b"new c")])

    assert store.get_bytes("d/a") == b"old a"
    assert store.list("d") == ["d/a"]
    assert not [p for p in tmp_path.rglob(".*") if p.is_file()]


def test_parse_updates_reads_each_file_as_params_from_bytes_does() -> None:
    size = _size()
    blobs = [w for _, w in _updates(6, size)]
    other = params_to_bytes(np.ones(size, np.float32), PolicySpec("actor_critic", (8, 8)))
    wrong_layout = params_to_bytes(np.ones(_size_of((4,)), np.float32), PolicySpec("actor_critic", (4,)))
    nan = params_to_bytes(np.full(size, np.nan, np.float32), SPEC)
    blobs += [other, wrong_layout, blobs[0][:-4], b"garbage", nan]

    parsed = parse_updates(blobs, SPEC)

    for data, got in zip(blobs, parsed, strict=True):
        try:
            expected = params_from_bytes(data, SPEC)[0]
        except LayoutError as exc:
            assert isinstance(got, LayoutError) and str(got) == str(exc)
            continue
        assert isinstance(got, np.ndarray) and got.dtype == np.float32
        assert np.array_equal(got.view(np.uint32), expected.view(np.uint32))
    assert sum(isinstance(p, LayoutError) for p in parsed) == 3


def _size_of(hidden: tuple[int, ...]) -> int:
    from fedtwin.policy.layout import layout_for

    return layout_for(PolicySpec("actor_critic", hidden)).size

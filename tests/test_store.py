"""LocalStore: atomic writes, sha256 verified on read, the run layout."""

import threading

import pytest

from fedtwin.core.errors import ConfigError, IntegrityError, StoreError
from fedtwin.store import LocalStore, RunLayout, list_runs, open_store
from tests.faultfs import immutable, read_only_view, required, small_tmpfs


def test_round_trip_and_listing(tmp_path):
    store = LocalStore(tmp_path)
    store.put_json("runs/a/state.json", {"x": 1})
    store.put_bytes("runs/a/rounds/0000/global.safetensors", b"abc")

    assert store.get_json("runs/a/state.json") == {"x": 1}
    assert store.get_bytes("runs/a/rounds/0000/global.safetensors") == b"abc"
    assert store.list("runs/a/") == ["runs/a/rounds/0000/global.safetensors", "runs/a/state.json"]
    assert list_runs(store) == []  # not initialized: config.yaml is what makes a run
    store.put_text("runs/a/config.yaml", "seed: 0\n")
    store.put_text("runs/b/config.yaml", "seed: 0\n")  # a run whose state.json was lost is still listed
    assert list_runs(store) == ["a", "b"]


def test_tampered_file_is_refused_with_its_name(tmp_path):
    store = LocalStore(tmp_path)
    store.put_bytes("k/obj.bin", b"original")
    (tmp_path / "k" / "obj.bin").write_bytes(b"tampered")

    with pytest.raises(IntegrityError, match=r"k/obj.bin is corrupt"):
        store.get_bytes("k/obj.bin")


def test_object_without_commit_marker_does_not_exist(tmp_path):
    store = LocalStore(tmp_path)
    (tmp_path / "half.bin").write_bytes(b"torn write")  # crashed before the sidecar was written

    assert not store.exists("half.bin")
    assert store.list("") == []
    with pytest.raises(IntegrityError):
        store.get_bytes("half.bin")


def test_no_overwrite_protects_existing_objects(tmp_path):
    store = LocalStore(tmp_path)
    store.put_text("runs/a/config.yaml", "seed: 1\n", overwrite=False)
    store.put_text("runs/a/config.yaml", "seed: 1\n", overwrite=False)  # identical: fine

    with pytest.raises(StoreError, match="refusing to overwrite"):
        store.put_text("runs/a/config.yaml", "seed: 2\n", overwrite=False)
    assert store.get_text("runs/a/config.yaml") == "seed: 1\n"


def test_keys_cannot_escape_the_root(tmp_path):
    with pytest.raises(StoreError, match="invalid store key"):
        LocalStore(tmp_path).put_bytes("../outside", b"x")


def test_missing_object_names_it(tmp_path):
    with pytest.raises(StoreError, match=r"runs/x/state\.json does not exist"):
        LocalStore(tmp_path).get_json("runs/x/state.json")


def test_a_local_store_runs_jobs_one_at_a_time_in_order(tmp_path):
    # Local writes are CPU-bound (open, write, fsync): threads only added CPU time when measured.
    store = LocalStore(tmp_path)
    callers: list[int] = []

    def job(i: int) -> int:
        callers.append(threading.get_ident())
        store.put_bytes(f"k/{i}", b"x")
        return i

    assert store.run_concurrently([lambda i=i: job(i) for i in range(5)]) == list(range(5))
    assert set(callers) == {threading.get_ident()}
    assert store.list("k/") == [f"k/{i}" for i in range(5)]


def test_layout_matches_design():
    layout = RunLayout("demo")
    assert layout.config == "runs/demo/config.yaml"
    assert layout.twins == "runs/demo/twins.yaml"
    assert layout.global_model(3) == "runs/demo/rounds/0003/global.safetensors"
    assert layout.update_weights(3, "twin-001") == "runs/demo/rounds/0003/updates/twin-001.safetensors"
    assert layout.update_meta(3, "twin-001") == "runs/demo/rounds/0003/updates/twin-001.json"
    assert layout.summary(3) == "runs/demo/rounds/0003/summary.json"
    assert layout.state == "runs/demo/state.json"
    assert layout.report("report.md") == "runs/demo/report/report.md"


def test_unsupported_url_scheme():
    with pytest.raises(ConfigError, match="unsupported store URL"):
        open_store("gs://bucket/x")


@pytest.mark.parametrize("crash_after", ["pending", "commit"])
def test_a_crash_at_any_point_of_an_overwrite_leaves_old_or_new(tmp_path, monkeypatch, crash_after):
    store = LocalStore(tmp_path)
    store.put_json("runs/a/state.json", {"round": 1})
    real_replace = __import__("os").replace
    calls = []

    def crashing_replace(src, dst):
        calls.append(dst)
        real_replace(src, dst)
        if (crash_after == "pending" and str(dst).endswith(".pending")) or \
           (crash_after == "commit" and str(dst).endswith(".sha256")):
            raise KeyboardInterrupt("simulated kill")

    monkeypatch.setattr("fedtwin.store.local.os.replace", crashing_replace)
    with pytest.raises(KeyboardInterrupt):
        store.put_json("runs/a/state.json", {"round": 2})
    monkeypatch.undo()

    expected = {"round": 1} if crash_after == "pending" else {"round": 2}
    assert store.get_json("runs/a/state.json") == expected
    assert store.exists("runs/a/state.json")
    assert store.list("runs/") == ["runs/a/state.json"]


def test_first_write_interrupted_after_commit_is_rolled_forward(tmp_path):
    store = LocalStore(tmp_path)
    store.put_bytes("k/obj.bin", b"v1")
    target = tmp_path / "k" / "obj.bin"
    (tmp_path / "k" / ".obj.bin.pending").write_bytes(b"v1")
    target.unlink()  # as if killed between the sidecar commit and the final rename

    assert store.exists("k/obj.bin")
    assert store.get_bytes("k/obj.bin") == b"v1"


def test_listing_finds_exactly_what_exists_says_is_there(tmp_path):
    """`list` reads each directory once instead of asking `exists` per key: both must agree on committed
    objects, writes rolled forward from a pending file (either name), torn writes and hidden files."""
    store = LocalStore(tmp_path)
    store.put_many([(f"r/updates/twin-{i:03d}.json", b"{}") for i in range(3)] + [("r/a.b.c.json", b"1")])
    store.put_bytes("r/deep/er/x.bin", b"x")
    store.put_bytes("r/updates/w.0123456789abcdef", b"w")  # a name that ends like a writer's token
    for name, pending in (("twin-001.json", ".twin-001.json.0123456789abcdef.pending"),
                          ("twin-002.json", ".twin-002.json.pending"),
                          ("w.0123456789abcdef", ".w.0123456789abcdef.pending")):
        (tmp_path / "r/updates" / pending).write_bytes(b"{}")
        (tmp_path / "r/updates" / name).unlink()  # killed between the commit point and the rename
    (tmp_path / "r/updates/torn.json").write_bytes(b"{}")  # no sidecar: never committed
    (tmp_path / "r/updates/gone.json.sha256").write_text("0" * 64)  # sidecar, no object, no pending
    (tmp_path / "r/updates/.hidden.json.sha256").write_text("0" * 64)
    candidates = ["r/updates/twin-000.json", "r/updates/twin-001.json", "r/updates/twin-002.json",
                  "r/updates/torn.json", "r/updates/gone.json", "r/a.b.c.json", "r/deep/er/x.bin",
                  "r/updates/w.0123456789abcdef", "r/updates/w"]
    expected = sorted(k for k in candidates if store.exists(k))
    assert expected == ["r/a.b.c.json", "r/deep/er/x.bin", "r/updates/twin-000.json",
                        "r/updates/twin-001.json", "r/updates/twin-002.json", "r/updates/w.0123456789abcdef"]
    assert store.list("r/") == expected
    assert store.list("r/updates/") == expected[2:]
    assert store.list("r/updates/twin-00") == expected[2:5]
    assert store.list("nothing/") == []


# ------------------------------------------------------------ filesystem faults (issue 17, item 4)
def test_a_full_disk_is_one_line_naming_the_object_and_the_fix_and_keeps_the_old_object(tmp_path):
    with required(small_tmpfs(tmp_path / "disk", "64k")) as disk:
        store = LocalStore(disk)
        store.put_json("runs/a/state.json", {"round": 1})

        with pytest.raises(StoreError) as err:
            store.put_bytes("runs/a/state.json", b"x" * 200_000)

        message = str(err.value)
        assert message.startswith(f"cannot write {disk}/runs/a/state.json: no space left on device")
        assert "free space" in message and "\n" not in message
        assert store.get_json("runs/a/state.json") == {"round": 1}
        assert sorted(p.name for p in (disk / "runs" / "a").iterdir()) == ["state.json", "state.json.sha256"]


def test_a_read_only_store_reads_but_refuses_writes_in_one_line(tmp_path):
    LocalStore(tmp_path / "src").put_json("runs/a/state.json", {"round": 1})
    with required(read_only_view(tmp_path / "src", tmp_path / "ro")) as view:
        store = LocalStore(view)
        assert store.get_json("runs/a/state.json") == {"round": 1}
        assert store.list("runs/") == ["runs/a/state.json"]

        with pytest.raises(StoreError, match=r"cannot write .*/ro/runs/a/state.json: read-only file system "
                                             r"\(EROFS\); .*writable"):
            store.put_json("runs/a/state.json", {"round": 2})


def test_a_directory_nobody_may_write_is_one_line_naming_it(tmp_path):
    store = LocalStore(tmp_path)
    store.put_json("runs/a/state.json", {"round": 1})
    with required(immutable(tmp_path / "runs" / "a")):
        with pytest.raises(StoreError, match=r"cannot write .*/runs/a/state.json: operation not permitted "
                                             r"\(EPERM\); .*permission"):
            store.put_json("runs/a/state.json", {"round": 2})
        with pytest.raises(StoreError, match=r"cannot write .*/runs/a/new/x: operation not permitted"):
            store.put_bytes("runs/a/new/x", b"x")
    assert store.get_json("runs/a/state.json") == {"round": 1}


# ---------------------------------------------------------- concurrent writers (issue 17, item 7)
def _write_many(root: str, key: str, tag: str, count: int) -> None:
    store = LocalStore(root)
    for i in range(count):
        store.put_bytes(key, f"{tag}{i:04d}".encode() * 2000)


def test_two_writers_and_a_reader_on_one_key_never_fail_or_tear(tmp_path):
    import multiprocessing

    store = LocalStore(tmp_path)
    key = "runs/a/rounds/0000/summary.json"
    store.put_bytes(key, b"start")
    context = multiprocessing.get_context("spawn")
    writers = [context.Process(target=_write_many, args=(str(tmp_path), key, tag, 300)) for tag in "ab"]
    for writer in writers:
        writer.start()
    reads = 0
    while any(w.is_alive() for w in writers):
        data = store.get_bytes(key)  # raises on a torn read
        assert data == b"start" or (len(data) == 10_000 and data == data[:5] * 2000)
        reads += 1
    for writer in writers:
        writer.join()

    assert [w.exitcode for w in writers] == [0, 0] and reads > 0
    assert store.get_bytes(key) in (b"a0299" * 2000, b"b0299" * 2000)
    assert [p.name for p in (tmp_path / "runs/a/rounds/0000").iterdir() if p.name.startswith(".")] == []


def test_a_run_lock_admits_one_holder_and_is_free_again_after_release_or_death(tmp_path):
    import subprocess
    import sys

    from fedtwin.store import LockHeldError

    store = LocalStore(tmp_path)
    with store.lock("runs/r/runner.lock"):
        with pytest.raises(LockHeldError) as err, LocalStore(tmp_path).lock("runs/r/runner.lock"):
            pass
        assert err.value.holder["pid"] == __import__("os").getpid()
        assert store.list("runs/") == []  # not a store object
    with store.lock("runs/r/runner.lock"):
        pass
    # a holder killed with SIGKILL: the kernel drops its flock at once
    code = ("import os, signal, sys; from fedtwin.store import LocalStore; "
            "cm = LocalStore(sys.argv[1]).lock('runs/r/runner.lock'); cm.__enter__(); "
            "os.kill(os.getpid(), signal.SIGKILL)")
    assert subprocess.run([sys.executable, "-c", code, str(tmp_path)]).returncode == -9
    with store.lock("runs/r/runner.lock"):
        pass

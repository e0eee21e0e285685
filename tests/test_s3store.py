"""S3Store: the ArtifactStore contract against a real S3 server (SeaweedFS), and its clear errors."""

from __future__ import annotations

import functools
import http.server
import json
import pickle
import socket
import subprocess
import sys
import threading
import time
import uuid

import pytest

from fedtwin.config import S3Config
from fedtwin.core.errors import ConfigError, IntegrityError, StoreError
from fedtwin.federation.updates import UpdateRecord, update_twin_ids, write_updates
from fedtwin.store import RunLayout, list_runs, open_store, sha256_hex
from fedtwin.store.s3 import (
    S3AccessDeniedError,
    S3BucketNotFoundError,
    S3EndpointError,
    S3Settings,
    S3Store,
    parse_s3_url,
)
from tests.servers import TWIN_ID


def make_store(server, prefix=None, bucket=None, access_key=None, secret_key=None, **settings):
    """An S3Store on the test server under a fresh prefix, with explicit keys (no env needed)."""
    client = server.client(access_key, secret_key)
    base = dict(endpoint=server.endpoint, region=server.region, max_attempts=2)
    base.update(settings)
    return S3Store(bucket or server.bucket, prefix if prefix is not None else f"t-{uuid.uuid4().hex[:8]}",
                   S3Settings(**base), client=client)


# ------------------------------------------------------------------------- settings (no server)
def test_url_parsing():
    assert parse_s3_url("s3://bucket/a/b/") == ("bucket", "a/b")
    assert parse_s3_url("s3://bucket") == ("bucket", "")
    with pytest.raises(ConfigError, match="names no bucket"):
        parse_s3_url("s3:///prefix")


def test_config_wins_over_environment_which_wins_over_defaults():
    env = {"FEDTWIN_S3_ENDPOINT": "http://env:9000", "FEDTWIN_S3_REGION": "eu-west-1",
           "FEDTWIN_S3_MAX_ATTEMPTS": "7"}

    from_env = S3Settings.resolve(None, env)
    from_config = S3Settings.resolve(S3Config(endpoint="http://cfg:9000", connect_timeout=2), env)

    assert (from_env.endpoint, from_env.region, from_env.max_attempts) == ("http://env:9000", "eu-west-1", 7)
    assert from_env.read_timeout == 30.0  # built-in default
    assert (from_config.endpoint, from_config.region) == ("http://cfg:9000", "eu-west-1")
    assert from_config.connect_timeout == 2.0


def test_endpoint_falls_back_to_boto3_variables():
    env = {"AWS_ENDPOINT_URL": "http://aws-generic:9000", "AWS_ENDPOINT_URL_S3": "http://aws-s3:9000"}

    assert S3Settings.resolve(None, env).endpoint == "http://aws-s3:9000"
    assert S3Settings.resolve(None, {**env, "FEDTWIN_S3_ENDPOINT": "http://ours:9000"}).endpoint == (
        "http://ours:9000")


def test_bad_environment_setting_is_one_clear_line():
    with pytest.raises(ConfigError, match=r"max_attempts='zero'.*FEDTWIN_S3_MAX_ATTEMPTS"):
        S3Settings.resolve(None, {"FEDTWIN_S3_MAX_ATTEMPTS": "zero"})


def test_open_store_selects_s3_and_passes_the_config(monkeypatch):
    monkeypatch.setenv("FEDTWIN_S3_ENDPOINT", "http://127.0.0.1:1")
    store = open_store("s3://bucket/prefix/", S3Config(region="eu-north-1"))

    assert isinstance(store, S3Store)
    assert (store.bucket, store.prefix, store.url) == ("bucket", "prefix", "s3://bucket/prefix")
    assert store.settings.endpoint == "http://127.0.0.1:1"
    assert store.settings.region == "eu-north-1"
    assert store.describe("runs/a/state.json") == "s3://bucket/prefix/runs/a/state.json"


def test_client_gets_timeouts_retries_and_path_style():
    store = S3Store("b", "p", S3Settings(endpoint="http://127.0.0.1:1", connect_timeout=1.5,
                                         read_timeout=2.5, max_attempts=4))
    config = store.client.meta.config

    assert (config.connect_timeout, config.read_timeout) == (1.5, 2.5)
    assert config.retries == {"total_max_attempts": 4, "mode": "standard"}
    assert config.s3 == {"addressing_style": "path"}


def test_store_pickles_for_worker_processes_without_its_client():
    store = S3Store("b", "p", S3Settings(endpoint="http://127.0.0.1:1", max_attempts=2))
    assert store.client is not None

    copy = pickle.loads(pickle.dumps(store))

    assert (copy.url, copy.settings) == (store.url, store.settings)
    assert copy.client is not store.client and copy.client.meta.endpoint_url == "http://127.0.0.1:1"


def test_unreachable_endpoint_fails_fast_and_names_it(monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "y")
    with socket.socket() as sock:  # a port that was free a moment ago: connection refused
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    endpoint = f"http://127.0.0.1:{port}"
    store = S3Store("bucket", "p", S3Settings(endpoint=endpoint, region="us-east-1", connect_timeout=1,
                                              read_timeout=1, max_attempts=2))

    started = time.monotonic()
    with pytest.raises(S3EndpointError, match=rf"S3 endpoint {endpoint} is unreachable.*FEDTWIN_S3_ENDPOINT"):
        store.get_json("runs/a/state.json")
    assert time.monotonic() - started < 10


def test_endpoint_that_never_answers_times_out(monkeypatch):
    """A hung server (accepts, never replies) costs read_timeout per attempt, then a clear error."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "y")
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    accepted = []
    stop = threading.Event()

    def accept_and_hold():
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                accepted.append(listener.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept_and_hold, daemon=True)
    thread.start()
    endpoint = f"http://127.0.0.1:{listener.getsockname()[1]}"
    store = S3Store("bucket", "p", S3Settings(endpoint=endpoint, region="us-east-1", connect_timeout=1,
                                              read_timeout=0.5, max_attempts=2))
    try:
        started = time.monotonic()
        with pytest.raises(S3EndpointError, match="ReadTimeoutError after 2 attempts"):
            store.exists("runs/a/state.json")
        assert time.monotonic() - started < 8
        assert len(accepted) == 2  # the retry really happened
    finally:
        stop.set()
        thread.join()
        for conn in accepted:
            conn.close()
        listener.close()


def test_flaky_endpoint_is_retried_instead_of_failing(monkeypatch):
    """A 503 (e.g. an overloaded gateway) costs a retry, not the step."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "y")
    calls = []

    class Flaky(http.server.BaseHTTPRequestHandler):
        def do_HEAD(self):
            calls.append(self.path)
            self.send_response(503 if len(calls) == 1 else 200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Flaky)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        store = S3Store("bucket", "p", S3Settings(endpoint=f"http://127.0.0.1:{server.server_port}",
                                                  region="us-east-1", max_attempts=3))
        assert store.exists("runs/a/state.json")
        assert calls == ["/bucket/p/runs/a/state.json"] * 2
    finally:
        server.shutdown()
        thread.join()


# ------------------------------------------------------------------------ against a real server

@pytest.mark.integration
def test_round_trip_list_and_exists(s3_server):
    store = make_store(s3_server)
    store.put_json("runs/a/state.json", {"x": 1})
    store.put_bytes("runs/a/rounds/0000/global.safetensors", b"abc")
    store.put_text("runs/a/config.yaml", "seed: 0\n")  # what makes a run (list_runs)
    make_store(s3_server, prefix=store.prefix + "-other").put_text("runs/z/config.yaml", "seed: 0\n")

    assert store.get_json("runs/a/state.json") == {"x": 1}
    assert store.get_bytes("runs/a/rounds/0000/global.safetensors") == b"abc"
    assert store.exists("runs/a/state.json")
    assert not store.exists("runs/a/missing.json")
    assert store.list("runs/a/") == ["runs/a/config.yaml", "runs/a/rounds/0000/global.safetensors",
                                      "runs/a/state.json"]
    assert store.list("runs/a/rounds/0000/glo") == ["runs/a/rounds/0000/global.safetensors"]
    assert store.list("runs/b/") == []
    assert list_runs(store) == ["a"]  # the sibling prefix "-other" is not part of this store


@pytest.mark.integration
def test_sha256_travels_as_metadata_in_the_same_put(s3_server):
    store = make_store(s3_server)
    store.put_bytes("k/obj.bin", b"payload")

    head = s3_server.client().head_object(Bucket=store.bucket, Key=f"{store.prefix}/k/obj.bin")

    assert head["Metadata"] == {"sha256": sha256_hex(b"payload")}


@pytest.mark.integration
def test_list_pages_through_more_than_one_page(s3_server):
    store = make_store(s3_server)
    keys = [f"runs/a/rounds/{i:04d}/summary.json" for i in range(7)]
    for key in keys:
        store.put_json(key, {})
    paginator = store.client.get_paginator("list_objects_v2")
    original = paginator.paginate
    store.client.get_paginator = lambda name: paginator
    paginator.paginate = lambda **kw: original(**kw, PaginationConfig={"PageSize": 2})

    assert store.list("runs/a/") == keys


@pytest.mark.integration
def test_object_overwritten_behind_our_back_is_refused(s3_server):
    store = make_store(s3_server)
    store.put_bytes("runs/a/rounds/0000/global.safetensors", b"original")
    raw = s3_server.client()
    key = f"{store.prefix}/runs/a/rounds/0000/global.safetensors"

    raw.put_object(Bucket=store.bucket, Key=key, Body=b"tampered")  # no sha256 metadata
    with pytest.raises(IntegrityError, match=r"global.safetensors is corrupt.*recorded none"):
        store.get_bytes("runs/a/rounds/0000/global.safetensors")

    raw.put_object(Bucket=store.bucket, Key=key, Body=b"tampered",
                   Metadata={"sha256": sha256_hex(b"original")})
    with pytest.raises(IntegrityError, match="is corrupt"):
        store.get_bytes("runs/a/rounds/0000/global.safetensors")


@pytest.mark.integration
def test_no_overwrite_and_missing_object(s3_server):
    store = make_store(s3_server)
    store.put_text("runs/a/config.yaml", "seed: 1\n", overwrite=False)
    store.put_text("runs/a/config.yaml", "seed: 1\n", overwrite=False)

    with pytest.raises(StoreError, match="refusing to overwrite"):
        store.put_text("runs/a/config.yaml", "seed: 2\n", overwrite=False)
    with pytest.raises(StoreError, match=r"runs/x/state.json does not exist"):
        store.get_json("runs/x/state.json")


@pytest.mark.integration
def test_missing_bucket_is_named_with_the_fix(s3_server):
    store = make_store(s3_server, bucket="no-such-bucket")

    for action in (lambda: store.exists("runs/a/state.json"), lambda: store.get_json("runs/a/state.json"),
                   lambda: store.list("runs/"), lambda: store.put_json("runs/a/state.json", {})):
        with pytest.raises(S3BucketNotFoundError, match=rf"bucket 'no-such-bucket' does not exist at "
                                                       rf"{s3_server.endpoint}; create it"):
            action()


@pytest.mark.integration
@pytest.mark.parametrize("keys", [("fedtwin-admin", "wrong-secret"), ("unknown-key", "whatever")],
                         ids=["wrong-secret", "unknown-access-key"])
def test_wrong_credentials_are_rejected(s3_server, keys):
    """A real server checks signatures (a mock such as moto would accept any keys)."""
    good = make_store(s3_server)
    good.put_json("runs/a/state.json", {"x": 1})
    bad = make_store(s3_server, prefix=good.prefix, access_key=keys[0], secret_key=keys[1])

    with pytest.raises(S3AccessDeniedError, match=r"access denied to read s3://fedtwin/.*runs/a/state.json "
                                                  r"at http://127.0.0.1:\d+ \((SignatureDoesNotMatch|"
                                                  r"InvalidAccessKeyId)"):
        bad.get_json("runs/a/state.json")
    with pytest.raises(S3AccessDeniedError):
        bad.put_json("runs/a/state.json", {"x": 2})
    assert good.get_json("runs/a/state.json") == {"x": 1}


@pytest.mark.integration
def test_scoped_twin_identity_writes_only_its_own_update(s3_server):
    """SeaweedFS path-scoped actions: the twin reads global models and writes only its own update."""
    run = RunLayout(f"scoped-{uuid.uuid4().hex[:8]}")
    admin = make_store(s3_server, prefix="")
    admin.put_bytes(run.global_model(0), b"global weights")
    admin.put_json(run.update_meta(0, "twin-001"), {"twin_id": "twin-001"})
    twin = make_store(s3_server, prefix="", access_key=s3_server.twin_access_key,
                      secret_key=s3_server.twin_secret_key)

    assert twin.get_bytes(run.global_model(0)) == b"global weights"
    twin.put_bytes(run.update_weights(0, TWIN_ID), b"my update")
    twin.put_json(run.update_meta(0, TWIN_ID), {"twin_id": TWIN_ID})
    assert admin.get_bytes(run.update_weights(0, TWIN_ID)) == b"my update"

    with pytest.raises(S3AccessDeniedError, match="access denied to write"):
        twin.put_json(run.update_meta(0, "twin-001"), {"twin_id": "forged"})
    with pytest.raises(S3AccessDeniedError):
        twin.put_bytes(run.global_model(1), b"forged global")
    with pytest.raises(S3AccessDeniedError, match="access denied to read"):
        twin.get_json(run.update_meta(0, "twin-001"))
    assert admin.get_json(run.update_meta(0, "twin-001")) == {"twin_id": "twin-001"}


@pytest.mark.integration
def test_a_shards_update_writes_overlap_on_s3_and_all_land(s3_server, monkeypatch):
    store = make_store(s3_server)
    lock, in_flight, peak = threading.Lock(), [0], [0]
    put = S3Store._write

    def counted(self, key, data, sha):
        with lock:
            in_flight[0] += 1
            peak[0] = max(peak[0], in_flight[0])
        try:
            time.sleep(0.02)  # keep each request open long enough for overlap to show
            put(self, key, data, sha)
        finally:
            with lock:
                in_flight[0] -= 1

    monkeypatch.setattr(S3Store, "_write", counted)
    layout = RunLayout("shard")
    ids = [f"twin-{i:03d}" for i in range(20)]
    updates = [(UpdateRecord(twin_id=t, round=0, num_samples=1, sha256="", base_sha256="0" * 64),
                f"weights of {t}".encode()) for t in ids]

    records = write_updates(store, layout, updates)

    assert [r.twin_id for r in records] == ids
    assert 1 < peak[0] <= S3Store.max_concurrency
    assert update_twin_ids(store, layout, 0) == ids
    for twin_id in ids:
        weights = store.get_bytes(layout.update_weights(0, twin_id))  # sha verified on read
        assert weights == f"weights of {twin_id}".encode()
        assert store.get_json(layout.update_meta(0, twin_id))["sha256"] == sha256_hex(weights)


@pytest.mark.integration
def test_a_failed_job_among_concurrent_ones_is_raised_after_the_others_finish(s3_server):
    store = make_store(s3_server)

    def job(i):
        if i == 3:
            raise StoreError("job 3 failed")
        time.sleep(0.01)
        store.put_bytes(f"jobs/{i:02d}", b"x")
        return i

    with pytest.raises(StoreError, match="job 3 failed"):
        store.run_concurrently([functools.partial(job, i) for i in range(10)])

    assert store.list("jobs/") == [f"jobs/{i:02d}" for i in range(10) if i != 3]


# -------------------------------------------------------------- the runner's lease (issue 17, item 7)
@pytest.mark.integration
def test_a_lease_admits_one_holder_until_it_is_released_or_expires(s3_server):
    from fedtwin.store import LockHeldError

    store = make_store(s3_server)
    other = make_store(s3_server, prefix=store.prefix)  # a second runner: its own client
    with store.lock("runs/r/runner.lock", ttl=30):
        with pytest.raises(LockHeldError) as err, other.lock("runs/r/runner.lock", ttl=30):
            pass
        holder = err.value.holder
        assert holder["pid"] == __import__("os").getpid() and holder["expires_at"] > time.time() + 20
    assert not store.exists("runs/r/runner.lock")  # released: deleted
    with other.lock("runs/r/runner.lock", ttl=30):  # and free again
        pass
    # A holder that died without releasing: its lease is taken over once it expires.
    store.client.put_object(Bucket=store.bucket, Key=store._key("runs/r/runner.lock"),
                            Body=b'{"pid": 1, "host": "gone", "since": "x", "expires_at": 0}')
    with other.lock("runs/r/runner.lock", ttl=30):
        pass
    # A holder on this host whose process is gone (a runner killed here): taken over before it expires.
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True)
    body = {"pid": int(dead.stdout), "host": socket.gethostname(), "since": "x",
            "expires_at": time.time() + 60}
    store.client.put_object(Bucket=store.bucket, Key=store._key("runs/r/runner.lock"),
                            Body=json.dumps(body).encode())
    with other.lock("runs/r/runner.lock", ttl=30):
        pass


@pytest.mark.integration
def test_a_lease_is_renewed_while_its_holder_runs(s3_server):
    from fedtwin.store import LockHeldError

    store = make_store(s3_server)
    other = make_store(s3_server, prefix=store.prefix)
    with store.lock("runs/r/runner.lock", ttl=1.5) as lease:
        time.sleep(3.5)  # more than twice the ttl: only renewals keep it
        with pytest.raises(LockHeldError), other.lock("runs/r/runner.lock", ttl=1.5):
            pass
        lease.check()  # still ours

"""Issue 21, test 6 (the UI half): the Argo UI that `argo server` serves draws the finished
fedtwin-federated run (the `clean_run` fixture, 4 rounds x 3 twins) as a graph, rounds as nodes and
each round's twin pods under it; a headless Chromium screenshot of it is saved as a test artifact.

The UI is Argo v4.0.7's own, built by tests/cluster/build.py (see README.md, "The Argo UI") and
embedded in the `argo` binary. Chromium is driven through the DevTools protocol over a pipe
(`--remote-debugging-pipe`), so no port is opened and no websocket library is needed. What is
checked comes from the page's DOM (the graph's SVG), matched against the node ids of the workflow
the server's API returns; the PNG is for people (and CI's artifacts).

Screenshots land in `$FEDTWIN_TEST_ARTIFACTS` or, unset, tests/cluster/artifacts/ (git-ignored).
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import os
import queue
import re
import shutil
import struct
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.cluster import build
from tests.cluster.charts import Release
from tests.cluster.harness import Cluster

HERE = Path(__file__).resolve().parent
ROUND_NAME = re.compile(r"^round\((\d+):\d+\)$")
VIEWPORT = (1600, 1000)
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",  # as root, Chromium refuses to start with its sandbox
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--disable-default-apps",
    "--disable-domain-reliability",
    "--disable-client-side-phishing-detection",
    "--no-pings",
    "--metrics-recording-only",
    "--mute-audio",
    "--hide-scrollbars",
    # Every host name but 127.0.0.1 fails to resolve: the browser cannot reach anything else.
    "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
    "--remote-debugging-pipe",
)


def artifacts_dir() -> Path:
    configured = os.environ.get("FEDTWIN_TEST_ARTIFACTS")
    directory = Path(configured) if configured else HERE / "artifacts"
    directory.mkdir(parents=True, exist_ok=True)
    return directory


class DevToolsError(RuntimeError):
    pass


class Chromium:
    """Headless Chromium, driven through the DevTools protocol over a pipe: the browser reads
    NUL-terminated JSON commands on its fd 3 and writes responses and events on its fd 4."""

    def __init__(self, binary: str, profile: Path, log_path: Path) -> None:
        to_browser, self._commands = os.pipe()
        self._replies, from_browser = os.pipe()
        # Above 9, so the child's dup2 onto 3 and 4 cannot clobber them.
        child_in = fcntl.fcntl(to_browser, fcntl.F_DUPFD, 10)
        child_out = fcntl.fcntl(from_browser, fcntl.F_DUPFD, 10)
        os.close(to_browser)
        os.close(from_browser)

        def child_fds() -> None:
            os.dup2(child_in, 3)
            os.dup2(child_out, 4)

        self.log_path = log_path
        with log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "about:blank"],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                pass_fds=(3, 4),  # kept open in the child after preexec_fn's dup2
                preexec_fn=child_fds,
                start_new_session=True,
            )
        os.close(child_in)
        os.close(child_out)
        self._next_id = 0
        self._lock = threading.Lock()
        self._waiting: dict[int, queue.Queue[dict[str, Any]]] = {}
        self.events: list[dict[str, Any]] = []
        self._reader = threading.Thread(target=self._read, name="chromium-devtools", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        buffer = b""
        while True:
            try:
                chunk = os.read(self._replies, 1 << 16)
            except OSError:
                chunk = b""
            if not chunk:
                for waiter in list(self._waiting.values()):
                    waiter.put({"error": {"message": "the browser closed its DevTools pipe"}})
                return
            buffer += chunk
            *messages, buffer = buffer.split(b"\0")
            for raw in messages:
                message = json.loads(raw)
                waiter = self._waiting.pop(message["id"], None) if "id" in message else None
                if waiter is not None:
                    waiter.put(message)
                elif "method" in message:
                    self.events.append(message)

    def send(
        self,
        method: str,
        params: dict[str, Any] | None = None,
        session: str | None = None,
        timeout: float = 60,
    ) -> dict[str, Any]:
        with self._lock:
            self._next_id += 1
            ident = self._next_id
            waiter: queue.Queue[dict[str, Any]] = queue.Queue(maxsize=1)
            self._waiting[ident] = waiter
            message: dict[str, Any] = {"id": ident, "method": method, "params": params or {}}
            if session:
                message["sessionId"] = session
            os.write(self._commands, json.dumps(message).encode() + b"\0")
        try:
            reply = waiter.get(timeout=timeout)
        except queue.Empty:
            self._waiting.pop(ident, None)
            raise DevToolsError(
                f"{method}: no answer in {timeout:.0f} s; browser log: {self.log_tail()}"
            ) from None
        if "error" in reply:
            raise DevToolsError(f"{method}: {reply['error'].get('message')}; browser log: {self.log_tail()}")
        return dict(reply.get("result", {}))

    def log_tail(self, lines: int = 15) -> str:
        with contextlib.suppress(OSError):
            return " | ".join(self.log_path.read_text(errors="replace").strip().splitlines()[-lines:])
        return ""

    def close(self) -> None:
        with contextlib.suppress(DevToolsError, OSError):
            self.send("Browser.close", timeout=10)
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, 9)
            self.process.wait(timeout=10)
        for fd in (self._commands, self._replies):
            with contextlib.suppress(OSError):
                os.close(fd)


class Page:
    """One tab of a Chromium (a flattened DevTools session)."""

    def __init__(self, browser: Chromium, width: int, height: int) -> None:
        self.browser = browser
        target = browser.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        self.session = browser.send("Target.attachToTarget", {"targetId": target, "flatten": True})[
            "sessionId"
        ]
        self.resize(width, height)
        for domain in ("Page", "Runtime", "Network"):
            self.send(f"{domain}.enable")

    def send(self, method: str, params: dict[str, Any] | None = None, timeout: float = 60) -> dict[str, Any]:
        return self.browser.send(method, params, session=self.session, timeout=timeout)

    def resize(self, width: int, height: int) -> None:
        self.send(
            "Emulation.setDeviceMetricsOverride",
            {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
        )

    def evaluate(self, expression: str) -> Any:
        result = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True})
        if "exceptionDetails" in result:
            raise DevToolsError(f"{expression[:80]}...: {result['exceptionDetails'].get('text')}")
        return result["result"].get("value")

    def wait_for(self, what: str, check: Callable[[], Any], timeout: float) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            value = check()
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"the page did not show {what} in {timeout:.0f} s; {self.problems()}")
            time.sleep(0.5)

    def problems(self) -> str:
        """The page's uncaught exceptions and console errors, for failure messages."""
        found = []
        for event in self.browser.events:
            if event.get("method") == "Runtime.exceptionThrown":
                details = event["params"]["exceptionDetails"]
                found.append(details.get("exception", {}).get("description") or details.get("text"))
            elif event.get("method") == "Runtime.consoleAPICalled" and event["params"]["type"] == "error":
                found.append(
                    " ".join(str(a.get("value", a.get("description"))) for a in event["params"]["args"])
                )
        return f"page errors: {found[-5:]}" if found else "no page errors"

    def requested_hosts(self) -> set[str]:
        return {
            urlsplit(event["params"]["request"]["url"]).hostname or ""
            for event in self.browser.events
            if event.get("method") == "Network.requestWillBeSent"
            and event["params"]["request"]["url"].startswith(("http:", "https:", "ws:", "wss:"))
        }

    def screenshot(self, path: Path) -> None:
        data = self.send("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": False})["data"]
        path.write_bytes(base64.b64decode(data))


@contextlib.contextmanager
def chromium_page(binary: str, tmp_path: Path) -> Iterator[Page]:
    browser = Chromium(binary, tmp_path / "chromium-profile", tmp_path / "chromium.log")
    try:
        yield Page(browser, *VIEWPORT)
    finally:
        browser.close()
        shutil.rmtree(tmp_path / "chromium-profile", ignore_errors=True)


GRAPH_NODES_JS = """
Array.from(document.querySelectorAll('.graph svg g > title')).map(title => {
    const g = title.parentElement;
    const at = /translate\\(([-\\d.e]+),\\s*([-\\d.e]+)\\)/.exec(g.getAttribute('transform') || '');
    const node = g.querySelector(':scope > g.node');
    const label = g.querySelector('text.node-label');
    return {
        title: title.textContent,
        x: at ? Number(at[1]) : null,
        y: at ? Number(at[2]) : null,
        classes: node ? node.getAttribute('class') : '',
        label: label ? Array.from(label.querySelectorAll('tspan')).map(t => t.textContent).join('') : '',
    };
})
"""
GRAPH_BOX_JS = """
(() => {
    const svg = document.querySelector('.graph svg');
    if (!svg) return null;
    const box = svg.getBoundingClientRect();
    return {x: box.x + window.scrollX, y: box.y + window.scrollY, width: box.width, height: box.height};
})()
"""


DISMISS_MODAL_JS = """
(() => {
    const close = document.querySelector('.modal .modal-close');
    if (close) close.click();
    return Boolean(close);
})()
"""


def dismiss_modals(page: Page) -> None:
    """Close the UI's first-visit modals (first-time user, new version) as a user would: they cover
    the graph, and come one after the other once the server's /api/v1/info has answered."""
    quiet = 0
    for _ in range(40):
        quiet = 0 if page.evaluate(DISMISS_MODAL_JS) else quiet + 1
        if quiet >= 4:
            return
        time.sleep(0.5)


def drawn_nodes(page: Page) -> dict[str, dict[str, Any]]:
    """The graph's nodes in the DOM, by Argo node id (each node's SVG <title> is `<id> (<label>)`)."""
    drawn = {}
    for node in page.evaluate(GRAPH_NODES_JS) or []:
        ident, _, rest = node["title"].partition(" (")
        node["display"] = rest[:-1] if rest.endswith(")") else rest
        drawn[ident] = node
    return drawn


def expected_graph(workflow: dict[str, Any]) -> dict[int, tuple[dict[str, Any], list[dict[str, Any]]]]:
    """Round number -> (the round's node, the pods inside it: its twins' train pods and its
    aggregate pod), from the workflow as the API serves it."""
    nodes = workflow["status"]["nodes"]
    rounds = {}
    for node in nodes.values():
        match = ROUND_NAME.match(node.get("displayName", ""))
        if match and node.get("templateName") == "round":
            pods = [n for n in nodes.values() if n.get("boundaryID") == node["id"] and n["type"] == "Pod"]
            rounds[int(match.group(1))] = (node, sorted(pods, key=lambda n: n["displayName"]))
    return rounds


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()[:24]
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def check_ui_graph(url: str, namespace: str, workflow: dict[str, Any], chromium: str, tmp_path: Path) -> Path:
    """Open the workflow's page in headless Chromium, wait for the graph, save the screenshot and
    check the graph from the DOM against `workflow` (as the API serves it); the screenshot's path."""
    name = workflow["metadata"]["name"]
    rounds = expected_graph(workflow)
    assert sorted(rounds) == [0, 1, 2, 3], sorted(rounds)
    for number, (_, pods) in rounds.items():
        templates = sorted(p["templateName"] for p in pods)
        assert templates == ["aggregate", "train", "train", "train"], (number, templates)

    screenshot = artifacts_dir() / "argo-ui-fedtwin-federated.png"
    wanted = {node["id"] for node, pods in rounds.values()} | {
        p["id"] for _, pods in rounds.values() for p in pods
    }
    with chromium_page(chromium, tmp_path) as page:
        page.send("Page.navigate", {"url": f"{url}/workflows/{namespace}/{name}?tab=workflow"})
        try:
            page.wait_for("the workflow graph", lambda: drawn_nodes(page), timeout=120)
            dismiss_modals(page)
            # The UI folds a node's children when there are more than three (here the four rounds
            # of the rounds step): "Expand all nodes", as a user would.
            page.evaluate("document.querySelector('a[title=\"Expand all nodes\"]').click()")
            drawn = page.wait_for(
                "every round and pod node", lambda: (d := drawn_nodes(page)) and wanted <= d.keys() and d, 60
            )
            box = page.evaluate(GRAPH_BOX_JS)
            if box and (box["x"] + box["width"] > VIEWPORT[0] or box["y"] + box["height"] > VIEWPORT[1]):
                # A viewport as large as the graph, so the screenshot holds all of it.
                page.resize(
                    max(VIEWPORT[0], int(box["x"] + box["width"]) + 40), int(box["y"] + box["height"]) + 40
                )
                time.sleep(1.0)
            covered = page.evaluate("document.querySelector('.modal') !== null")
            assert not covered, "a modal still covers the graph"
        finally:
            page.screenshot(screenshot)
            (artifacts_dir() / "argo-ui-fedtwin-federated.nodes.json").write_text(
                json.dumps(drawn_nodes(page), indent=1, sort_keys=True)
            )
        hosts = page.requested_hosts()
    assert hosts <= {"127.0.0.1"}, f"the page requested other hosts: {hosts}"

    round_x = {number: drawn[node["id"]]["x"] for number, (node, _) in rounds.items()}
    for number, (round_node, pods) in sorted(rounds.items()):
        shown = drawn[round_node["id"]]
        assert shown["display"] == f"round({number}:{number})" and "Succeeded" in shown["classes"], shown
        for pod in pods:
            pod_shown = drawn[pod["id"]]
            assert pod_shown["display"] == pod["displayName"] and "Succeeded" in pod_shown["classes"], (
                pod_shown
            )
            # Under its own round: lower, and nearer to it than to any other round's column.
            assert pod_shown["y"] > shown["y"], f"{pod['displayName']} is not drawn below {shown['display']}"
            nearest = min(round_x, key=lambda n: abs(round_x[n] - pod_shown["x"]))
            assert nearest == number, f"{pod['displayName']} of round {number} is drawn under round {nearest}"
        train = [drawn[p["id"]] for p in pods if p["templateName"] == "train"]
        twins = sorted(re.sub(r"^train\(\d+:(twin-\d+)\)\(\d+\)$", r"\1", t["display"]) for t in train)
        assert twins == ["twin-000", "twin-001", "twin-002"], (number, twins)
        aggregate = next(drawn[p["id"]] for p in pods if p["templateName"] == "aggregate")
        assert all(aggregate["y"] > t["y"] for t in train), (aggregate, train)
    labels = {node["display"] for node in drawn.values()}
    assert {"init", "evaluate", "report"} <= {label.split("(")[0] for label in labels}, labels
    width, height = png_size(screenshot)
    assert width >= VIEWPORT[0] and height >= VIEWPORT[1], (width, height)
    return screenshot


# Session-scoped, and named first by the test: a missing UI or browser fails it at once, before it
# waits for the cluster and the clean run.
@pytest.fixture(scope="session")
def argo_ui(cluster_binaries: build.Binaries) -> Path:
    try:
        return build.require_ui(cluster_binaries)
    except build.BuildError as exc:
        error = str(exc)
    pytest.fail(f"tests/cluster: {error}", pytrace=False)  # outside the except: no chained traceback


@pytest.fixture(scope="session")
def chromium() -> str:
    try:
        return build.require_chromium()
    except build.BuildError as exc:
        error = str(exc)
    pytest.fail(f"tests/cluster: {error}", pytrace=False)  # outside the except: no chained traceback


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.timeout(1500)  # the first test to ask for clean_run waits for the run (~2 min) too
def test_ui_draws_rounds_and_twin_pods(
    argo_ui: Path, chromium: str, fedtwin_release: Release, clean_run: dict[str, Any], tmp_path: Path
) -> None:
    """Test 6 (UI part): the UI page of the finished run draws every round as a node and, below
    each, its twins' train pods and its aggregate pod, all Succeeded; the screenshot is saved."""
    cluster: Cluster = fedtwin_release.cluster
    name = clean_run["metadata"]["name"]
    url = cluster.start_argo_server()
    response = cluster.argo_api(url, f"/api/v1/workflows/{cluster.namespace}/{name}")
    assert response.status_code == 200, f"{response.text[:500]}\n{cluster.argo_server_log()}"
    index = cluster.argo_api(url, "/")
    assert index.status_code == 200 and 'src="main.' in index.text, (
        f"argo server does not serve the UI's index.html ({argo_ui}): {index.text[:300]}"
    )
    screenshot = check_ui_graph(url, cluster.namespace, response.json(), chromium, tmp_path)
    print(f"screenshot: {screenshot} {png_size(screenshot)}")


def test_missing_ui_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without a UI build, the test above fails with the build's own line (never a skip)."""
    monkeypatch.setenv("FEDTWIN_CLUSTER_CACHE", str(tmp_path))
    binaries = build.Binaries(
        *(tmp_path / n for n in ("a", "b", "c", "d", "e")), ui_error="npm not found on PATH: x"
    )
    with pytest.raises(
        build.BuildError, match=r"^argo was built without the Argo UI \(a placeholder page\): npm not"
    ):
        build.require_ui(binaries)
    plain = build.Binaries(*(tmp_path / n for n in ("a", "b", "c", "d", "e")))
    with pytest.raises(build.BuildError, match="run `make cluster-tools` to build it"):
        build.require_ui(plain)


def test_committed_ui_files_hold_the_documented_substitutions() -> None:
    """tests/cluster/ui: package.json has exactly build.py's dependency changes and upstream's yarn
    resolutions as npm overrides; the lock file pins every package without a registry address and
    matches package.json (`npm ci` refuses a lock out of step with it)."""
    package = json.loads((build.UI_DIR / "package.json").read_text())
    for name, spec in build.UI_DEPENDENCY_CHANGES.items():
        assert package["dependencies"][name] == spec, name
    assert not any("git" in spec or "://" in spec for spec in package["dependencies"].values())
    assert package["overrides"] == package["resolutions"]
    lock_text = (build.UI_DIR / "package-lock.json").read_text()
    assert '"resolved"' not in lock_text
    lock = json.loads(lock_text)
    root = lock["packages"][""]
    assert root["dependencies"] == package["dependencies"]
    assert root["devDependencies"] == package["devDependencies"]
    assert lock["packages"]["node_modules/argo-ui"]["version"] == "1.0.0"
    assert lock["packages"]["node_modules/uuid-v3"]["version"] == "3.4.0"
    assert all("integrity" in p for path, p in lock["packages"].items() if path and not p.get("link"))


def test_ui_key_covers_the_committed_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    key = build.ui_key()
    assert key.startswith("argo-ui-v4.0.7-")
    copy = tmp_path / "ui"
    shutil.copytree(build.UI_DIR, copy)
    monkeypatch.setattr(build, "UI_DIR", copy)
    assert build.ui_key() == key
    (copy / "webpack.fedtwin.js").write_text((copy / "webpack.fedtwin.js").read_text() + "\n// changed\n")
    assert build.ui_key() != key
    assert build.ARGO.key("go1.26.8", key) != build.ARGO.key("go1.26.8")  # argo's key includes the UI's


def test_ui_build_failures_are_one_line() -> None:
    refused = (
        "npm error code ECONNREFUSED\nnpm error syscall connect\nnpm error errno ECONNREFUSED\n"
        "npm error FetchError: request to http://127.0.0.1:9/zwitch failed, reason: connect ECONNREFUSED\n"
    )
    assert build.npm_failure(refused).startswith(
        "the npm registry did not answer (ECONNREFUSED: FetchError: request to http://127.0.0.1:9/zwitch"
    )
    assert build.npm_failure("npm error code E404\nnpm error 404 Not Found - GET x\n").startswith(
        "the npm registry answered 404"
    )
    webpack = (
        "WARNING in x\n\nERROR in ./node_modules/argo-ui/src/components/form-field/form-field.tsx 6:13-31\n"
        "Module not found: Error: Can't resolve 'uuid/v1' in '/x'\n"
    )
    assert build.webpack_failure(webpack) == (
        "ERROR in ./node_modules/argo-ui/src/components/form-field/form-field.tsx 6:13-31: "
        "Module not found: Error: Can't resolve 'uuid/v1' in '/x'"
    )


def test_missing_npm_leaves_argo_with_the_placeholder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No npm: ensure() still returns binaries (argo with the placeholder page) and says why."""
    go = tmp_path / "bin" / "go"
    go.parent.mkdir()
    go.write_text("#!/bin/sh\nif [ \"$1 $2\" = 'env GOVERSION' ]; then echo go1.26.8; exit 0; fi\nexit 1\n")
    go.chmod(0o755)
    monkeypatch.setenv("PATH", str(go.parent))
    monkeypatch.setenv("FEDTWIN_CLUSTER_CACHE", str(tmp_path / "cache"))
    for name in (build.KUBE.key("go1.26.8"), build.ARGO.key("go1.26.8")):
        (tmp_path / "cache" / name / "bin").mkdir(parents=True)
        (tmp_path / "cache" / name / "manifest.json").write_text("{}")
    built = build.ensure()
    assert built.argo_ui is None and built.ui_error is not None
    assert built.ui_error.startswith("node not found on PATH") and "\n" not in built.ui_error
    found = build.cached()
    assert found is not None and found.argo == built.argo and found.ui_error == built.ui_error
    with pytest.raises(build.BuildError, match="placeholder page\\): node not found on PATH"):
        build.require_ui(found)
    # The cached UI and an argo built with it are preferred once they exist.
    ui_dir = tmp_path / "cache" / build.ui_key()
    (ui_dir / "dist" / "app").mkdir(parents=True)
    (ui_dir / "manifest.json").write_text("{}")
    with_ui = tmp_path / "cache" / build.ARGO.key("go1.26.8", build.ui_key())
    (with_ui / "bin").mkdir(parents=True)
    (with_ui / "manifest.json").write_text("{}")
    found = build.cached()
    assert (
        found is not None
        and found.argo == with_ui / "bin" / "argo"
        and found.argo_ui == ui_dir / "dist" / "app"
    )


def test_chromium_is_not_installed_when_not_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("FEDTWIN_CHROMIUM", raising=False)
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(
        build.BuildError, match=r"^chromium not found .*; not root, so not installing it; as root"
    ):
        build.ensure_chromium()
    monkeypatch.setenv("FEDTWIN_INSTALL_CHROMIUM", "0")
    with pytest.raises(build.BuildError, match="FEDTWIN_INSTALL_CHROMIUM=0, so not installing it"):
        build.ensure_chromium()

"""A small Kubernetes REST client (requests + client certificate or bearer token) for the harness.

Only what the harness and its node agent use: get/list/create/patch/delete/apply, watch streams,
and kubeconfig files. Errors carry the API server's own message (`Status.message`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests
import yaml

# kind -> (API path prefix, plural, namespaced) for what the harness applies itself.
RESOURCES: dict[str, tuple[str, str, bool]] = {
    "Namespace": ("/api/v1", "namespaces", False),
    "ServiceAccount": ("/api/v1", "serviceaccounts", True),
    "ConfigMap": ("/api/v1", "configmaps", True),
    "Secret": ("/api/v1", "secrets", True),
    "Pod": ("/api/v1", "pods", True),
    "Node": ("/api/v1", "nodes", False),
    "ClusterRole": ("/apis/rbac.authorization.k8s.io/v1", "clusterroles", False),
    "ClusterRoleBinding": ("/apis/rbac.authorization.k8s.io/v1", "clusterrolebindings", False),
    "Role": ("/apis/rbac.authorization.k8s.io/v1", "roles", True),
    "RoleBinding": ("/apis/rbac.authorization.k8s.io/v1", "rolebindings", True),
    "CustomResourceDefinition": ("/apis/apiextensions.k8s.io/v1", "customresourcedefinitions", False),
    "Workflow": ("/apis/argoproj.io/v1alpha1", "workflows", True),
    "WorkflowTemplate": ("/apis/argoproj.io/v1alpha1", "workflowtemplates", True),
    "WorkflowTaskResult": ("/apis/argoproj.io/v1alpha1", "workflowtaskresults", True),
}


class KubeError(RuntimeError):
    def __init__(self, status: int, message: str, reason: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason


@dataclass(frozen=True)
class Credentials:
    """How one identity talks to the API server."""

    server: str
    ca_file: Path
    cert_file: Path | None = None
    key_file: Path | None = None
    token: str | None = None
    user: str = "admin"

    def kubeconfig(self, path: Path, namespace: str = "default") -> Path:
        user: dict[str, Any] = {}
        if self.token:
            user["token"] = self.token
        if self.cert_file and self.key_file:
            user["client-certificate"] = str(self.cert_file)
            user["client-key"] = str(self.key_file)
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "current-context": "fedtwin-local",
            "clusters": [
                {
                    "name": "fedtwin-local",
                    "cluster": {"server": self.server, "certificate-authority": str(self.ca_file)},
                }
            ],
            "users": [{"name": self.user, "user": user}],
            "contexts": [
                {
                    "name": "fedtwin-local",
                    "context": {"cluster": "fedtwin-local", "user": self.user, "namespace": namespace},
                }
            ],
        }
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        path.chmod(0o600)
        return path


def resource_path(
    kind: str, name: str | None = None, namespace: str | None = None, subresource: str | None = None
) -> str:
    try:
        prefix, plural, namespaced = RESOURCES[kind]
    except KeyError:
        raise ValueError(f"kind {kind!r} unknown to tests/cluster/kube.py; add it to RESOURCES") from None
    path = prefix
    if namespaced:
        if namespace is None:
            raise ValueError(f"{kind} is namespaced: give a namespace")
        path += f"/namespaces/{namespace}"
    path += f"/{plural}"
    if name:
        path += f"/{name}"
    if subresource:
        path += f"/{subresource}"
    return path


class Kube:
    """One identity's client. Thread-safe enough for the harness: one Session per thread is not
    needed because requests' Session is safe for concurrent simple requests."""

    def __init__(self, creds: Credentials, timeout: float = 30.0) -> None:
        self.creds = creds
        self.timeout = timeout
        self.session = requests.Session()
        # Not the environment's CA bundle or proxies (REQUESTS_CA_BUNDLE would override `verify`).
        self.session.trust_env = False
        self.session.verify = str(creds.ca_file)
        if creds.cert_file and creds.key_file:
            self.session.cert = (str(creds.cert_file), str(creds.key_file))
        if creds.token:
            self.session.headers["Authorization"] = f"Bearer {creds.token}"

    def close(self) -> None:
        self.session.close()

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        params: dict[str, Any] | None = None,
        content_type: str = "application/json",
        ok_missing: bool = False,
    ) -> Any:
        headers = {"Content-Type": content_type, "Accept": "application/json"}
        data = None
        if body is not None:
            data = body if isinstance(body, (bytes, str)) else json.dumps(body)
        response = self.session.request(
            method, self.creds.server + path, data=data, params=params, headers=headers, timeout=self.timeout
        )
        if response.status_code == 404 and ok_missing:
            return None
        if response.status_code >= 400:
            try:
                status = response.json()
                message, reason = status.get("message", response.text), status.get("reason", "")
            except ValueError:
                message, reason = response.text.strip(), ""
            raise KubeError(
                response.status_code, f"{method} {path}: {response.status_code} {message}", reason
            )
        return response.json() if response.content else None

    def get(self, path: str, **params: Any) -> Any:
        return self.request("GET", path, params=params or None)

    def get_optional(self, path: str) -> Any:
        return self.request("GET", path, ok_missing=True)

    def create(self, path: str, body: dict[str, Any]) -> Any:
        return self.request("POST", path, body)

    def merge_patch(self, path: str, body: dict[str, Any]) -> Any:
        return self.request("PATCH", path, body, content_type="application/merge-patch+json")

    def delete(self, path: str, **params: Any) -> Any:
        return self.request("DELETE", path, params=params or None, ok_missing=True)

    def apply(self, obj: dict[str, Any], manager: str = "fedtwin-cluster-harness") -> Any:
        """Server-side apply of one object (create or update; conflicts forced)."""
        meta = obj["metadata"]
        path = resource_path(obj["kind"], meta["name"], meta.get("namespace"))
        return self.request(
            "PATCH",
            path,
            obj,
            params={"fieldManager": manager, "force": "true"},
            content_type="application/apply-patch+yaml",
        )

    def watch(
        self, path: str, resource_version: str, timeout_seconds: int = 60, **params: Any
    ) -> Iterator[dict[str, Any]]:
        """Watch events from `resource_version` until the server ends the stream."""
        query = {
            "watch": "1",
            "resourceVersion": resource_version,
            "allowWatchBookmarks": "true",
            "timeoutSeconds": str(timeout_seconds),
            **params,
        }
        with self.session.get(
            self.creds.server + path, params=query, stream=True, timeout=(10, timeout_seconds + 30)
        ) as response:
            if response.status_code >= 400:
                raise KubeError(
                    response.status_code, f"WATCH {path}: {response.status_code} {response.text[:300]}"
                )
            for line in response.iter_lines():
                if line:
                    yield json.loads(line)

    def wait_for(self, what: str, check: Any, timeout: float, interval: float = 0.2) -> Any:
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            try:
                result = check()
                if result:
                    return result
            except (KubeError, requests.RequestException) as exc:
                last = exc
            time.sleep(interval)
        raise TimeoutError(
            f"timed out after {timeout:.0f} s waiting for {what}" + (f" (last error: {last})" if last else "")
        )


def load_yaml_documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]

"""A stand-in Kubernetes API server on 127.0.0.1, just enough for `helm install`.

helm-sdkpy bundles the real Helm as a library, but exposes no `helm template`: rendering
a chart means installing it. This server answers discovery for the kinds the chart uses,
stores what Helm creates (its release Secret included) in memory, and so lets the real
Helm render, order and "apply" the chart with no cluster. The tests then read the
rendered objects from `created`. It checks nothing itself; kubernetes-validate does.
"""

from __future__ import annotations

import http.server
import json
import threading
import urllib.parse

import yaml

# group/version -> [(plural, kind, namespaced)]
RESOURCES = {
    "v1": [("configmaps", "ConfigMap", True), ("secrets", "Secret", True),
           ("services", "Service", True), ("namespaces", "Namespace", False)],
    "apps/v1": [("deployments", "Deployment", True), ("statefulsets", "StatefulSet", True)],
    "networking.k8s.io/v1": [("networkpolicies", "NetworkPolicy", True)],
}


def _resource_list(group_version: str) -> dict:
    return {
        "kind": "APIResourceList", "apiVersion": "v1", "groupVersion": group_version,
        "resources": [
            {"name": plural, "singularName": kind.lower(), "namespaced": namespaced, "kind": kind,
             "verbs": ["create", "delete", "get", "list", "patch", "update", "watch"]}
            for plural, kind, namespaced in RESOURCES[group_version]
        ],
    }


class FakeApiServer:
    def __init__(self) -> None:
        server = self
        # (group_version, plural, namespace, name) -> object
        self.objects: dict[tuple, dict] = {}
        self.created: list[dict] = []
        self._lock = threading.Lock()
        self._rv = 0

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *_args):
                pass

            def _send(self, status: int, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _not_found(self, name: str = "") -> None:
                self._send(404, {"kind": "Status", "apiVersion": "v1", "status": "Failure",
                                 "reason": "NotFound", "code": 404, "message": f"{name} not found"})

            def _route(self):
                """(group_version, plural, namespace, name, query) of a resource path."""
                url = urllib.parse.urlsplit(self.path)
                parts = [p for p in url.path.split("/") if p]
                query = urllib.parse.parse_qs(url.query)
                if parts[:1] == ["api"]:
                    gv, rest = parts[1] if len(parts) > 1 else None, parts[2:]
                elif parts[:1] == ["apis"]:
                    gv, rest = ("/".join(parts[1:3]) if len(parts) > 2 else None), parts[3:]
                else:
                    return None
                namespace = None
                if rest[:1] == ["namespaces"] and len(rest) >= 3:
                    namespace, rest = rest[1], rest[2:]
                plural = rest[0] if rest else None
                name = rest[1] if len(rest) > 1 else None
                return gv, plural, namespace, name, query

            def do_GET(self):  # noqa: N802
                path = urllib.parse.urlsplit(self.path).path.rstrip("/")
                if path == "/version":
                    return self._send(200, {"major": "1", "minor": "33", "gitVersion": "v1.33.0",
                                            "platform": "linux/amd64"})
                if path == "/api":
                    return self._send(200, {"kind": "APIVersions", "versions": ["v1"],
                                            "serverAddressByClientCIDRs": []})
                if path == "/apis":
                    groups = []
                    for gv in RESOURCES:
                        if "/" in gv:
                            g, v = gv.split("/")
                            ver = {"groupVersion": gv, "version": v}
                            groups.append({"name": g, "versions": [ver], "preferredVersion": ver})
                    return self._send(200, {"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
                route = self._route()
                if route is None:
                    return self._not_found(path)
                gv, plural, namespace, name, query = route
                if plural is None and gv in RESOURCES:
                    return self._send(200, _resource_list(gv))
                with server._lock:
                    if name is not None:
                        obj = server.objects.get((gv, plural, namespace, name))
                        return self._send(200, obj) if obj else self._not_found(name)
                    selector = dict(kv.split("=", 1) for kv in
                                    ",".join(query.get("labelSelector", [""])).split(",") if "=" in kv)
                    items = [o for (g, p, ns, _), o in server.objects.items()
                             if g == gv and p == plural and (namespace is None or ns == namespace)
                             and all(o.get("metadata", {}).get("labels", {}).get(k) == v
                                     for k, v in selector.items())]
                kind = next((k for p, k, _ in RESOURCES.get(gv, []) if p == plural), "Unknown")
                return self._send(200, {"kind": f"{kind}List", "apiVersion": gv,
                                        "metadata": {"resourceVersion": str(server._rv)}, "items": items})

            def _body(self) -> dict:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                if "json" not in (self.headers.get("Content-Type") or ""):
                    # Helm's release Secret arrives as protobuf; its content does not
                    # matter here, only that the write succeeds.
                    return {"kind": "Secret", "apiVersion": "v1", "metadata": {}}
                return json.loads(raw or b"{}")

            def _store(self, created: bool):
                route = self._route()
                if route is None:
                    return self._not_found()
                gv, plural, namespace, name, _ = route
                obj = self._body()
                meta = obj.setdefault("metadata", {})
                name = name or meta.get("name") or f"opaque-{len(server.objects)}"
                meta.setdefault("name", name)
                with server._lock:
                    server._rv += 1
                    meta.setdefault("namespace", namespace)
                    meta["resourceVersion"] = str(server._rv)
                    meta.setdefault("uid", f"uid-{server._rv}")
                    server.objects[(gv, plural, namespace, name)] = obj
                    if created and plural != "secrets":
                        server.created.append(obj)
                return self._send(201 if created else 200, obj)

            def do_POST(self):  # noqa: N802
                self._store(created=True)

            def do_PUT(self):  # noqa: N802
                self._store(created=False)

            def do_PATCH(self):  # noqa: N802
                self._store(created=False)

            def do_DELETE(self):  # noqa: N802
                self._send(200, {"kind": "Status", "apiVersion": "v1", "status": "Success"})

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def kubeconfig(self) -> str:
        """A kubeconfig for this server, as YAML text (helm-sdkpy takes YAML or a path)."""
        return yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": "fake",
            "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
            "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake",
                                                       "namespace": "default"}}],
            "users": [{"name": "fake", "user": {"token": "not-a-real-token"}}],
        })

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

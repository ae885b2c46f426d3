"""Tools of the adversarial suite (`test_adversarial_*.py`): raw HTTP, and the leak check.

- `Answer` is one HTTP response, from `requests` or read off a raw socket, so that both
  go through the same checks. `raw_exchange` sends bytes exactly as written (two
  `Authorization` headers, odd chunking, a lying `Content-Length`, `//` or `..` in the
  path: what `requests` would fix or refuse to send).
- `foreign_data` lists what in an answer belongs to a tenant other than the caller's:
  another tenant's id, a metric or label name only other tenants have, or a series
  without the tenant label. `assert_refused_or_confined` is the suite's one verdict:
  the request was refused, or the answer holds only the caller's data.
- `refusing_layer` tells which layer answered: Envoy itself (its codec or router), the
  filter (a Prometheus JSON error, never forwarded) or the backend.
- The self-checks send the same attack straight to the backend (VictoriaMetrics or
  Prometheus), bypassing Envoy, and show that it does leak there, so a passing attack
  test proves something.
"""

from __future__ import annotations

import json
import re
import socket
from dataclasses import dataclass, field

import pytest
import requests
import seed
from conftest import REQUEST_TIMEOUT_S

ALICE = seed.ALICE_TENANT
TENANT_LABEL = seed.TENANT_LABEL
# Every series, whatever its labels: the attacks ask for everything and see what comes.
ANY_SERIES = '{__name__=~".+"}'
ANY_ENCODED = "%7B__name__%3D~%22.%2B%22%7D"  # ANY_SERIES, percent-encoded
FORM = "application/x-www-form-urlencoded"


# ---------------------------------------------------------------------------- answers


@dataclass
class Answer:
    """One HTTP response: status, headers (lower-case names, repeats joined by ", ")."""

    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""

    @classmethod
    def of(cls, response: requests.Response) -> "Answer":
        return cls(response.status_code, {k.lower(): v for k, v in response.headers.items()},
                   response.content)

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")

    def json(self):
        return json.loads(self.body)

    def __repr__(self) -> str:
        return f"<{self.status} {refusing_layer(self)}: {self.text[:300]!r}>"


def request_bytes(method: str, target: str | bytes, headers: list[tuple] = (),
                  body: bytes = b"", host: bool = True) -> bytes:
    """An HTTP/1.1 request exactly as given; `Connection: close` so the answer ends at EOF."""
    def raw(x):
        return x if isinstance(x, bytes) else x.encode("latin-1")
    lines = [raw(method) + b" " + raw(target) + b" HTTP/1.1"]
    if host:
        lines.append(b"Host: 127.0.0.1")
    lines += [raw(k) + b": " + raw(v) for k, v in headers]
    lines.append(b"Connection: close")
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def raw_exchange(url: str, data: bytes, expect: int | None = 1,
                 shut_write: bool = False) -> list[Answer]:
    """Sends `data` on one connection and returns the responses: `expect` of them, or
    (`expect=None`) all until the server closes. Reading stops at the last expected
    byte: Envoy holds a connection open for a while after some local replies.

    `shut_write` half-closes the connection after sending, for a body that never ends.
    An empty list means the server closed without answering."""
    host, port = url.rsplit("//", 1)[1].split(":")
    received = b""
    with socket.create_connection((host, int(port)), timeout=REQUEST_TIMEOUT_S) as sock:
        sock.sendall(data)
        if shut_write:
            sock.shutdown(socket.SHUT_WR)
        try:
            while expect is None or len(_parse_responses(received, complete_only=True)) < expect:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                received += chunk
        except socket.timeout:
            pytest.fail(f"no complete answer within {REQUEST_TIMEOUT_S}s; got {received[:200]!r}",
                        pytrace=False)
        except ConnectionResetError:
            pass  # what was read so far is the answer
    return _parse_responses(received)


def _parse_responses(data: bytes, complete_only: bool = False) -> list[Answer]:
    """The responses in `data`; with `complete_only`, those fully received so far (a
    response without length or chunking is complete only at the connection's end)."""
    answers = []
    while data:
        head, sep, rest = data.partition(b"\r\n\r\n")
        if not sep:
            if complete_only:
                break
            raise AssertionError(f"truncated response head: {data[:200]!r}")
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        headers: dict[str, str] = {}
        for line in header_lines:
            name, _, value = line.partition(":")
            name = name.strip().lower()
            headers[name] = f"{headers[name]}, {value.strip()}" if name in headers else value.strip()
        if headers.get("transfer-encoding", "").lower() == "chunked":
            body = b""
            while True:
                size_line, sep, after = rest.partition(b"\r\n")
                if not sep:
                    return answers
                size = int(size_line.split(b";")[0], 16)
                if len(after) < size + 2:
                    return answers
                body, rest = body + after[:size], after[size + 2:]
                if size == 0:
                    break
        elif "content-length" in headers:
            size = int(headers["content-length"])
            if len(rest) < size:
                if complete_only:
                    break
                raise AssertionError(f"truncated response body: {data[:200]!r}")
            body, rest = rest[:size], rest[size:]
        else:
            if complete_only:
                break
            body, rest = rest, b""
        answers.append(Answer(int(status_line.split()[1]), headers, body))
        data = rest
    return answers


def raw_one(url: str, data: bytes) -> Answer:
    answers = raw_exchange(url, data)
    assert len(answers) == 1, answers
    return answers[0]


# ---------------------------------------------------------------------------- the verdict


def is_prometheus_error(answer: Answer) -> bool:
    try:
        body = answer.json()
    except ValueError:
        return False
    return (isinstance(body, dict) and body.get("status") == "error"
            and isinstance(body.get("errorType"), str) and isinstance(body.get("error"), str))


def refusing_layer(answer: Answer) -> str:
    """Who answered: "backend" (Envoy forwarded it: its upstream timing header is set),
    "filter" (a Prometheus JSON error Envoy did not forward) or "envoy" (anything else
    Envoy said on its own: its codec's 400, 413 or 431, for example)."""
    if "x-envoy-upstream-service-time" in answer.headers:
        return "backend"
    if is_prometheus_error(answer):
        return "filter"
    return "envoy"


def _foreign_strings(own: set[str]) -> set[str]:
    """Tenant ids, metric names and label names and values that only other tenants have."""
    mine, theirs = set(), set()
    for labels in seed.ALL_SERIES:
        words = set(labels) | set(labels.values())
        if labels.get(TENANT_LABEL) in own:
            mine |= words
        elif TENANT_LABEL in labels:
            theirs |= words
    return theirs - mine


def _strings(value) -> list[str]:
    if isinstance(value, str):
        # Cardinality statistics name label pairs as "client_id=2000": check both halves.
        return [value, *value.split("=", 1)] if "=" in value else [value]
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in [k, *_strings(v)]]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return []


def _label_sets(value) -> list[dict]:
    """Every object that looks like a series' labels (it has a `__name__`)."""
    if isinstance(value, dict):
        found = [value] if isinstance(value.get("__name__"), str) else []
        return found + [d for v in value.values() for d in _label_sets(v)]
    if isinstance(value, list):
        return [d for v in value for d in _label_sets(v)]
    return []


def _exposition_documents(text: str) -> list:
    """A federate answer as label dicts, one per sample line."""
    series = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name, _, rest = line.partition("{")
        labels = {"__name__": name.split()[0]}
        for key, value in re.findall(r'([A-Za-z_][A-Za-z0-9_]*)="((?:[^"\\]|\\.)*)"', rest):
            labels[key] = value.encode().decode("unicode_escape")
        series.append(labels)
    return series


def documents(answer: Answer) -> list:
    """The answer's data: one JSON document, JSON lines (export) or exposition (federate)."""
    text = answer.text
    try:
        return [json.loads(text)]
    except ValueError:
        pass
    try:
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    except ValueError:
        return _exposition_documents(text)


def foreign_data(answer: Answer, own: tuple[str, ...] = (ALICE,)) -> list[str]:
    """What in a successful answer is not the caller's: empty when it is all theirs."""
    foreign = _foreign_strings(set(own))
    problems = []
    for doc in documents(answer):
        for s in sorted(set(_strings(doc)) & foreign):
            problems.append(f"another tenant's {s!r}")
        for labels in _label_sets(doc):
            tenant = labels.get(TENANT_LABEL)
            if tenant is None:
                problems.append(f"a series without the tenant label: {labels}")
            elif tenant not in own and tenant in foreign:
                problems.append(f"a series of tenant {tenant!r}: {labels}")
    return problems


def assert_refused_or_confined(answer: Answer, own: tuple[str, ...] = (ALICE,),
                               layers: set[str] | None = None) -> str:
    """The suite's verdict: refused (by any layer, a filter refusal in Prometheus' JSON
    shape), or a success holding only `own`'s data. Returns the layer that answered, or
    "confined" for a forwarded success; `layers`, when given, are the acceptable ones."""
    if answer.status == 200:
        outcome = "confined"
        assert refusing_layer(answer) == "backend", f"a 200 the backend never gave: {answer}"
        problems = foreign_data(answer, own)
        assert not problems, f"LEAK: {problems[:5]} in {answer}"
    else:
        assert answer.status >= 400, answer
        outcome = refusing_layer(answer)
        if outcome == "filter":
            assert 400 <= answer.status < 600 and answer.status != 404, answer
    if layers is not None:
        assert outcome in layers, f"answered by {outcome}, expected {sorted(layers)}: {answer}"
    return outcome


# The attack tables' last column says whether the same bytes sent straight to the
# backend leak: True on both backends, VM_ONLY where only VictoriaMetrics reads the trick
# (Prometheus refuses it or ignores the parameter), False where neither does.
VM_ONLY = "victoriametrics"


def leaks_on(backend: str, leaks_directly: bool | str) -> bool:
    return leaks_directly is True or leaks_directly == backend


def assert_leaks_directly(answer: Answer, own: tuple[str, ...] = (ALICE,)) -> None:
    """Self-check of an attack: sent straight to the backend it does expose data of
    other tenants, so the filter's refusal or rewrite is what protected it."""
    assert answer.status == 200, f"the backend itself refused the attack: {answer}"
    assert foreign_data(answer, own), f"the attack shows nothing foreign even unfiltered: {answer}"


def backend_requests(proxy) -> int:
    """Requests Envoy has sent to the backend cluster so far."""
    return proxy.backend_stat("upstream_rq_total")


def backend_snapshot(proxy) -> dict[str, int]:
    """Envoy's backend statistics that say whether a request reached it and was served."""
    names = ("upstream_rq_total", "upstream_rq_completed")
    return {name: proxy.backend_stat(name) for name in names}


def assert_not_served(proxy, before: dict[str, int], envoy_mode: str) -> None:
    """A refused request did not reach the backend. With `allow_on_headers_stop_iteration`
    the filter judges a body that comes with its headers before either goes on, so not
    even the headers did. Without it (Istio) the headers go on once the identity and URL
    are decided, ahead of the body: then the backend may have been sent those headers,
    but Envoy reset that request when the filter refused the body, and the backend
    answered nothing (test_lifecycle.py shows, to the byte, that no body reached it)."""
    after = backend_snapshot(proxy)
    if envoy_mode == "istio":
        assert after["upstream_rq_completed"] == before["upstream_rq_completed"], \
            "the backend answered a refused request"
    else:
        assert after["upstream_rq_total"] == before["upstream_rq_total"], \
            "a refused request reached the backend"

#!/usr/bin/env python3
"""Writes the fuzz targets' seed corpora into fuzz/corpus/<target>/ (git-ignored).

The seeds are read in place from ../shared/corpus (PROMQL_CORPUS_DIR overrides):
every expression of promql_corpus.jsonl and every input of prometheus_parse_cases.jsonl,
wrapped in each target's input format (see the targets' module docs); rules_response's
are the rule engines' answers in tests/data/rules/. Files are named by
the SHA-1 of their content, as libFuzzer names its own, so re-running adds nothing twice.
"""

import hashlib
import json
import os
import sys
import urllib.parse
from pathlib import Path

FUZZ_DIR = Path(__file__).resolve().parent
CORPUS_DIR = Path(os.environ.get("PROMQL_CORPUS_DIR", FUZZ_DIR.parent.parent / "shared" / "corpus"))

# request_decision's field separator and request flag bits.
SEP = b"\xff"
EOS, CT, CE, CL, CRED, BEARER = 1, 2, 4, 8, 16, 128


def expressions():
    """Every expression, as bytes: the real-world corpus, then Prometheus' parser cases."""
    with open(CORPUS_DIR / "promql_corpus.jsonl", encoding="utf-8") as f:
        for line in f:
            if line.strip():
                yield json.loads(line)["expr"].encode()
    with open(CORPUS_DIR / "prometheus_parse_cases.jsonl", encoding="utf-8") as f:
        for line in f:
            if line.strip():
                case = json.loads(line)
                if "input_hex" in case:
                    yield bytes.fromhex(case["input_hex"])
                else:
                    yield case["input"].encode()


MEDIA_TYPES = [
    b"application/x-www-form-urlencoded; a=1; a=2",
    b"application/x-www-form-urlencoded; charset=utf-8; CHARSET=latin1",
    b"application/x-www-form-urlencoded; a=1; a=1",
    b"application/x-www-form-urlencoded; charset",
    b'application/x-www-form-urlencoded; charset="utf-8',
    b"application/x-www-form-urlencoded;;",
    b"application/x-www-form-urlencoded,text/plain",
    b"application/x-www-form-urlencoded; charset=utf-8,text/plain",
    b'APPLICATION/X-WWW-FORM-URLENCODED ; charset="UTF-8" ;',
    "application/x-www-form-urlencoded;\u00a0charset=utf-8".encode(),
    "appl\u0130cation/x-www-form-urlencoded".encode(),
    b"application/x-www-form-urlencoded; title*0*=us-ascii'en'a%20b; title*1=c",
    b'application/x-www-form-urlencoded; a="\\"\""',
    b"multipart/form-data; boundary=x",
]


def write(target, data, counts):
    out = FUZZ_DIR / "corpus" / target
    out.mkdir(parents=True, exist_ok=True)
    path = out / hashlib.sha1(data).hexdigest()
    if not path.exists():
        path.write_bytes(data)
        counts[target] = counts.get(target, 0) + 1


def decision_input(config_flags, request_flags, method, path, body=b"", content_type=b"",
                   tenants=b"1999", credential=b"dG9rZW4tYWJjZGVmZ2hpams", content_encoding=b""):
    fields = [method, path, content_type, content_encoding, str(len(body)).encode(), credential,
              body, tenants]
    return bytes([config_flags, request_flags]) + SEP.join(fields)


def main():
    counts = {}
    form = b"application/x-www-form-urlencoded"
    for i, expr in enumerate(expressions()):
        # rewrite_query: rotate the flag byte through policies, dialects and tenants.
        write("rewrite_query", bytes([i % 32]) + expr, counts)
        # metricsql_differential: both dialects, the tenants in turn.
        write("metricsql_differential", bytes([(i % 4) * 2]) + expr, counts)
        write("metricsql_differential", bytes([(i % 4) * 2 + 1]) + expr, counts)
        encoded = urllib.parse.quote_from_bytes(expr, safe="").encode()
        plus = urllib.parse.quote_plus(expr, safe="").encode()
        # form_codec: the expression as a query parameter, both escapings, plus its raw text.
        if i % 4 == 0:
            write("form_codec", b"query=" + plus + b"&time=1&match%5B%5D=" + encoded, counts)
            write("form_codec", expr, counts)
        # request_decision: GET and POST queries, series and labels, under varied configs.
        if i % 3 == 0:
            config = i % 128
            userinfo_ok = CRED | BEARER | EOS
            write("request_decision",
                  decision_input(config & ~32, userinfo_ok, b"GET", b"/api/v1/query?query=" + encoded),
                  counts)
            write("request_decision",
                  decision_input(config & ~32, CRED | BEARER | CT | CL, b"POST",
                                 b"/api/v1/query_range", b"query=" + plus + b"&step=15", form),
                  counts)
            write("request_decision",
                  decision_input(config & ~32, userinfo_ok, b"GET",
                                 b"/prometheus/api/v1/series?match[]=" + encoded),
                  counts)
    # Hand-written request shapes that the corpus does not produce.
    jwt = b"eyJjbGllbnRfaWQiOiI5In0"  # {"client_id":"9"}
    for config in (0, 2, 18, 34, 66):
        for request in (
            (CRED | BEARER | EOS, b"GET", b"/api/v1/labels", b"", b""),
            (CRED | BEARER | EOS, b"GET", b"/api/v1/label/job/values?start=1", b"", b""),
            (CRED | BEARER | CT, b"POST", b"/api/v1/labels", b"match[]=up", form),
            (CRED | BEARER | CT, b"GET", b"/api/v1/label/job/values", b"match[]=up", form),
            (CRED | BEARER | EOS, b"GET", b"/federate?match[]=up&extra_label=client_id%3D2", b"", b""),
            (CRED | BEARER | EOS, b"GET", b"/api/v1/status/buildinfo", b"", b""),
            (CRED | BEARER | EOS, b"POST", b"/api/v1/rules", b"", b""),
            (CRED | EOS, b"GET", b"/api/v1/query?query=up", b"", b""),
            (CRED | BEARER | CT | CE, b"POST", b"/api/v1/query", b"query=up", form),
        ):
            flags, method, path, body, ct = request
            write("request_decision", decision_input(config, flags, method, path, body, ct), counts)
            write("request_decision",
                  decision_input(config | 32, flags & ~BEARER, method, path, body, ct, credential=jwt),
                  counts)
        write("request_decision",
              decision_input(config, CRED | BEARER | EOS, b"GET", b"/api/v1/query?query=up",
                             tenants=b"a|b\xfec.d\xfe\"q\""),
              counts)
    # Writes, under configs with writes on (policy bits 0b11) and off: snappy and gzip
    # bodies of any type, the client's own extra_label, one tenant and several.
    for config in (3, 19, 35, 0):
        for path, ce in ((b"/api/v1/write?extra_label=client_id%3D2", b"snappy"),
                         (b"/prometheus/api/v1/import?extra_filters[]=x", b"gzip"),
                         (b"/influx/write?db=1&extra_label=a=b", b""),
                         (b"/api/v1/import/csv?format=1:label:client_id", b"")):
            for tenants in (b"9", b"9\xfe10"):
                write("request_decision",
                      decision_input(config, CRED | BEARER | CT | CE | CL, b"POST", path,
                                     b"\x00\x01binary", b"application/x-protobuf",
                                     content_encoding=ce, tenants=tenants),
                      counts)
    for raw in (b"", b"a=1&&b=2&", b"flag&query=rate%28x%5B5m%5D%29", b"q%=1", b"foo=1;query=x",
                b"x=%e2%82%ac", b"query=a+b&query=%7Bjob%3D%22x%22%7D", b"=&=x&y="):
        write("form_codec", raw, counts)
    # rules_response: the answers captured from vmalert and Prometheus, under each flag.
    for answer in sorted((FUZZ_DIR.parent / "tests" / "data" / "rules").glob("*.json")):
        for flags in range(16):
            write("rules_response", bytes([flags]) + answer.read_bytes(), counts)
    # Content types Go reads in its own way (issue #10): each is a form_codec input (read
    # as a Content-Type too) and the Content-Type of a POST to the selector endpoints.
    for content_type in MEDIA_TYPES:
        write("form_codec", content_type, counts)
        for config in (0, 16):
            for path, body in ((b"/api/v1/label/client_id/values", b"match[]=up"),
                               (b"/api/v1/labels?start=1", b"match=up"),
                               (b"/api/v1/query", b"query=up")):
                write("request_decision",
                      decision_input(config, CRED | BEARER | CT, b"POST", path, body, content_type),
                      counts)
    total = sum(counts.values())
    print(f"seed_corpus: {total} new seed files under {FUZZ_DIR / 'corpus'} {counts}")


if __name__ == "__main__":
    sys.exit(main())

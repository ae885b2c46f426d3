#!/usr/bin/env python3
"""Builds the filter's OCI images without a container engine (run by `make oci`).

Each image is an OCI image layout (a directory: `oci-layout`, `index.json`, blobs named
by their sha256) under the output directory, tagged with the given tag:

- `promql-tenant-filter`: what Istio's WasmPlugin pulls, in the "compat" variant of the
  Wasm image spec (solo-io/wasm `spec-compat.md`), the one `docker build` of
  deploy/oci/Dockerfile also gives: an OCI manifest with one
  `application/vnd.oci.image.layer.v1.tar+gzip` layer holding `/plugin.wasm`, and the
  manifest annotation `module.wasm.image/variant: compat`. Built with umoci.
- `promql-tenant-filter-wasm`: the same module as a Wasm OCI artifact, the spec's "oci"
  variant, which Istio reads too: two layers, the runtime config
  (`application/vnd.module.wasm.config.v1+json`) and the module itself, raw, not in a
  tar (`application/vnd.module.wasm.content.layer.v1+wasm`). umoci writes tar layers
  only, so this layout is written here; it is JSON and content-addressed blobs.
- `promql-tenant-filter-init`: the Kubernetes gateway's init image. A scratch image has
  no `cp`, so this one holds Debian's statically linked busybox as `/bin/busybox`, with
  `/bin/cp` linked to it, and `/plugin.wasm`. It runs as 101:101 and its command copies
  the module to `/wasm/plugin.wasm`, as deploy/kubernetes/deployment.yaml asks.
  Built with umoci.

Every timestamp is SOURCE_DATE_EPOCH, so the same module gives the same digests (a
WasmPlugin's `sha256` pins the manifest digest). No base image is pulled: none is
reachable where this is built, and none is needed.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

PLUGIN_IMAGE = "promql-tenant-filter"
ARTIFACT_IMAGE = "promql-tenant-filter-wasm"
INIT_IMAGE = "promql-tenant-filter-init"

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
WASM_CONFIG = "application/vnd.module.wasm.config.v1+json"
WASM_CONTENT = "application/vnd.module.wasm.content.layer.v1+wasm"
TITLE = "org.opencontainers.image.title"
REF_NAME = "org.opencontainers.image.ref.name"
VARIANT = "module.wasm.image/variant"

# The root_id every Envoy config and the WasmPlugin use (the module registers one root
# context for any id), and the proxy-wasm ABI the module exports.
ROOT_ID = "promql_tenant_filter"
ABI_VERSION = "v0.2.1"
# Who the init container runs as: the envoy user of the Kubernetes manifests.
INIT_USER = "101:101"
INIT_COMMAND = ["cp", "/plugin.wasm", "/wasm/plugin.wasm"]


def umoci(*args: str) -> None:
    subprocess.run(["umoci", *args], check=True)


def umoci_image(layout: Path, tag: str, files: dict[str, tuple[Path, int] | str],
                created: str, epoch: int, config: list[str]) -> None:
    """An image with one layer: `files` maps a path in the image to a file to copy there
    and its mode, or to a string for a relative symbolic link."""
    image = f"{layout}:{tag}"
    umoci("init", "--layout", str(layout))
    umoci("new", "--image", image)
    with tempfile.TemporaryDirectory(prefix="oci-bundle-") as tmp:
        bundle = Path(tmp) / "bundle"
        # Unpack and repack rather than `umoci insert`: umoci 0.4.7's insert leaves the
        # layer's tar stream without its end-of-archive blocks.
        umoci("unpack", "--image", image, str(bundle))
        rootfs = bundle / "rootfs"
        for target, source in files.items():
            path = rootfs / target.lstrip("/")
            path.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(source, str):
                path.symlink_to(source)
            else:
                shutil.copyfile(source[0], path)
                path.chmod(source[1])
        for path in [rootfs, *rootfs.rglob("*")]:
            os.utime(path, (epoch, epoch), follow_symlinks=False)
        umoci("repack", "--image", image, "--history.created", created,
              "--history.created_by", "make oci", str(bundle))
    umoci("config", "--image", image, "--created", created, "--no-history", *config)
    umoci("gc", "--layout", str(layout))


def write_blob(layout: Path, data: bytes) -> dict:
    digest = hashlib.sha256(data).hexdigest()
    path = layout / "blobs" / "sha256" / digest
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return {"digest": f"sha256:{digest}", "size": len(data)}


def canonical_json(value: dict) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def wasm_artifact(layout: Path, tag: str, module: bytes, created: str) -> None:
    """The "oci" variant, in the shape Istio's fetcher reads: exactly two layers, one of
    them the raw module."""
    layout.mkdir(parents=True)
    (layout / "oci-layout").write_bytes(canonical_json({"imageLayoutVersion": "1.0.0"}))
    runtime_config = canonical_json({
        "type": "envoy_proxy",
        "abiVersions": [ABI_VERSION],
        "config": {"root_ids": [ROOT_ID]},
    })
    config = write_blob(layout, runtime_config)
    manifest = canonical_json({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": WASM_CONFIG, **config},
        "layers": [
            {"mediaType": WASM_CONFIG, **config, "annotations": {TITLE: "runtime-config.json"}},
            {"mediaType": WASM_CONTENT, **write_blob(layout, module),
             "annotations": {TITLE: "plugin.wasm"}},
        ],
        "annotations": {"org.opencontainers.image.created": created, VARIANT: "oci"},
    })
    index = {"schemaVersion": 2, "manifests": [
        {"mediaType": OCI_MANIFEST, **write_blob(layout, manifest),
         "annotations": {REF_NAME: tag}}]}
    (layout / "index.json").write_bytes(canonical_json(index))


def manifest_digest(layout: Path, tag: str) -> str:
    index = json.loads((layout / "index.json").read_text())
    return next(m["digest"] for m in index["manifests"]
                if m.get("annotations", {}).get(REF_NAME) == tag)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--module", type=Path, required=True, help="the built .wasm")
    parser.add_argument("--busybox", type=Path, required=True, help="a static busybox")
    parser.add_argument("--out", type=Path, required=True, help="where the layouts go")
    parser.add_argument("--tag", required=True)
    parser.add_argument("--epoch", type=int,
                        default=int(os.environ.get("SOURCE_DATE_EPOCH", "0")))
    args = parser.parse_args()
    created = datetime.datetime.fromtimestamp(args.epoch, datetime.timezone.utc) \
        .strftime("%Y-%m-%dT%H:%M:%SZ")

    layouts = {name: args.out / name for name in (PLUGIN_IMAGE, ARTIFACT_IMAGE, INIT_IMAGE)}
    for layout in layouts.values():
        shutil.rmtree(layout, ignore_errors=True)
    args.out.mkdir(parents=True, exist_ok=True)

    module = (args.module, 0o644)
    umoci_image(layouts[PLUGIN_IMAGE], args.tag, {"/plugin.wasm": module}, created,
                args.epoch, ["--manifest.annotation", f"{VARIANT}=compat"])
    wasm_artifact(layouts[ARTIFACT_IMAGE], args.tag, args.module.read_bytes(), created)
    command = [f"--config.cmd={word}" for word in INIT_COMMAND]
    umoci_image(layouts[INIT_IMAGE], args.tag,
                {"/plugin.wasm": module, "/bin/busybox": (args.busybox, 0o755), "/bin/cp": "busybox"},
                created, args.epoch,
                [f"--config.user={INIT_USER}", "--config.env=PATH=/bin", *command])

    for name, layout in layouts.items():
        print(f"{name}:{args.tag}  {manifest_digest(layout, args.tag)}  (oci:{layout}:{args.tag})")


if __name__ == "__main__":
    main()

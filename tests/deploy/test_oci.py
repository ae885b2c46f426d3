"""The OCI images of `make oci`, opened without the tool that built them.

deploy/oci/build.py writes three OCI image layouts with umoci (and one by hand). Here
they are read as plain JSON and tar, every blob checked against its digest, and then:
- each is judged by the rules of Istio's image fetcher (istio/istio `pkg/wasm/
  imagefetcher.go`, restated in `istio_fetch` below), and the module it yields must be
  byte for byte the built one;
- skopeo, the tool that pushes them, must read each layout whole;
- the init image's command runs as the Kubernetes gateway's init container would: as
  its user, in its unpacked root filesystem (chroot), with the manifests' command and
  mount;
- a real Envoy loads each unpacked module (envoy/envoy.yaml, only the module path
  changed) and serves alice and bob a query each, confined to their own series.
Building twice must give the same digests.
"""

from __future__ import annotations

import calendar
import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import pytest
import requests

from conftest import ROOT, WASM, load_all_yaml, wasm_filters

sys.path.append(str(ROOT / "tests/e2e"))
import envoy_config  # noqa: E402
import seed  # noqa: E402
from procs import free_port, wait_until  # noqa: E402
from services import Envoy, OidcProvider, VictoriaMetrics  # noqa: E402

OCI_DIR = ROOT / "target/oci"
BUSYBOX = OCI_DIR / "busybox-static/bin/busybox"
BUILD = ROOT / "deploy/oci/build.py"
PLUGIN, ARTIFACT, INIT = "promql-tenant-filter", "promql-tenant-filter-wasm", "promql-tenant-filter-init"
IMAGES = (PLUGIN, ARTIFACT, INIT)

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"
WASM_CONFIG = "application/vnd.module.wasm.config.v1+json"
WASM_CONTENT = "application/vnd.module.wasm.content.layer.v1+wasm"
USERS = {"alice": seed.ALICE_TENANT, "bob": seed.BOB_TENANT}


def cargo_version() -> str:
    for line in (ROOT / "Cargo.toml").read_text().splitlines():
        if line.startswith("version = "):
            return line.split('"')[1]
    raise AssertionError("no version in Cargo.toml")


TAG = cargo_version()


@dataclass
class Image:
    manifest_bytes: bytes
    manifest: dict
    config: bytes
    layers: list[tuple[dict, bytes]]  # (descriptor, blob)


def read_blob(layout: Path, descriptor: dict) -> bytes:
    algorithm, digest = descriptor["digest"].split(":")
    assert algorithm == "sha256", descriptor
    data = (layout / "blobs" / algorithm / digest).read_bytes()
    assert hashlib.sha256(data).hexdigest() == digest, f"{layout}: blob {digest} is corrupt"
    assert len(data) == descriptor["size"], descriptor
    return data


def read_image(name: str, oci_dir: Path = OCI_DIR) -> Image:
    """The image tagged TAG in an OCI image layout, read as the image spec defines it."""
    layout = oci_dir / name
    if not (layout / "index.json").is_file():
        pytest.fail(f"{layout} is missing: run `make oci` (make deploy-check does)")
    assert json.loads((layout / "oci-layout").read_text()) == {"imageLayoutVersion": "1.0.0"}
    index = json.loads((layout / "index.json").read_text())
    tagged = [m for m in index["manifests"]
              if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == TAG]
    assert len(tagged) == 1, index
    assert tagged[0]["mediaType"] == OCI_MANIFEST
    manifest_bytes = read_blob(layout, tagged[0])
    manifest = json.loads(manifest_bytes)
    assert manifest["schemaVersion"] == 2
    return Image(manifest_bytes, manifest, read_blob(layout, manifest["config"]),
                 [(d, read_blob(layout, d)) for d in manifest["layers"]])


def tar_members(blob: bytes) -> dict[str, tuple[tarfile.TarInfo, bytes | None]]:
    """A tar+gzip layer's entries by normalised path (leading `./` and `/` dropped)."""
    entries = {}
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(blob))) as archive:
        for member in archive.getmembers():
            path = str(PurePosixPath("/", member.name).relative_to("/"))
            data = archive.extractfile(member).read() if member.isfile() else None
            entries[path] = (member, data)
    return entries


def istio_fetch(image: Image) -> tuple[str, bytes]:
    """What Istio's fetcher makes of an image: (the variant it took, the module).

    Its rules (imagefetcher.go, PrepareFetch): a Docker schema 2 manifest must have a
    Docker tar.gz last layer holding a file named plugin.wasm; otherwise the "compat"
    variant, an OCI tar+gzip last layer holding plugin.wasm, is tried; otherwise the
    "oci" variant: exactly two layers, one of them the raw module."""
    layers = image.layers
    assert layers, "Istio: number of layers must be greater than zero"
    if image.manifest.get("mediaType") == DOCKER_MANIFEST:
        wanted = DOCKER_LAYER
    elif layers[-1][0]["mediaType"] == OCI_LAYER:
        wanted = OCI_LAYER
    else:
        assert len(layers) == 2, f"Istio: number of layers must be 2 but got {len(layers)}"
        raw = [blob for d, blob in layers if d["mediaType"] == WASM_CONTENT]
        assert raw, f"Istio: could not find the layer of type {WASM_CONTENT}"
        return "oci", raw[0]
    descriptor, blob = layers[-1]
    assert descriptor["mediaType"] == wanted, descriptor
    found = [data for path, (_, data) in tar_members(blob).items()
             if PurePosixPath(path).name == "plugin.wasm"]
    assert found, "Istio: plugin.wasm not found in the archive"
    return ("docker" if wanted == DOCKER_LAYER else "compat"), found[0]


def test_plugin_image_is_istios_compat_variant():
    image = read_image(PLUGIN)
    assert istio_fetch(image) == ("compat", WASM.read_bytes())
    assert image.manifest["config"]["mediaType"] == OCI_CONFIG
    assert [d["mediaType"] for d, _ in image.layers] == [OCI_LAYER]
    # The spec's marker for an OCI-typed compat layer.
    assert image.manifest["annotations"]["module.wasm.image/variant"] == "compat"
    # One file, readable by anyone: nothing else, as in the Dockerfile's scratch stage.
    files = {p: m for p, (m, _) in tar_members(image.layers[0][1]).items() if not m.isdir()}
    assert list(files) == ["plugin.wasm"] and files["plugin.wasm"].mode == 0o644


def test_wasm_artifact_is_istios_oci_variant():
    image = read_image(ARTIFACT)
    assert istio_fetch(image) == ("oci", WASM.read_bytes())
    assert image.manifest["config"]["mediaType"] == WASM_CONFIG
    assert [d["mediaType"] for d, _ in image.layers] == [WASM_CONFIG, WASM_CONTENT]
    runtime = json.loads(image.layers[0][1])
    assert runtime == json.loads(image.config)
    envoy = envoy_config.render(envoy_config.ENVOY_DIR / "envoy.yaml", LISTEN_PORT=1,
                                ADMIN_PORT=2, OIDC_PORT=3, BACKEND_PORT=4, WASM_PATH=WASM)
    root_id = wasm_filters(envoy)[0]["root_id"]
    assert runtime["type"] == "envoy_proxy" and runtime["config"]["root_ids"] == [root_id]


def image_config(image: Image) -> dict:
    assert image.manifest["config"]["mediaType"] == OCI_CONFIG
    return json.loads(image.config)


def gateway_init_container() -> dict:
    docs = load_all_yaml((ROOT / "deploy/kubernetes/deployment.yaml").read_text())
    return docs[0]["spec"]["template"]["spec"]["initContainers"][0]


def test_init_image_holds_the_module_and_a_static_cp():
    image = read_image(INIT)
    assert [d["mediaType"] for d, _ in image.layers] == [OCI_LAYER]
    config = image_config(image)["config"]
    # As the Dockerfile's init stage: the manifests' pod runs as 101, and the image says so.
    assert config["User"] == "101:101"
    assert config["Cmd"] == gateway_init_container()["command"]
    entries = tar_members(image.layers[0][1])
    assert entries["plugin.wasm"][1] == WASM.read_bytes()
    assert entries["bin/cp"][0].issym() and entries["bin/cp"][0].linkname == "busybox"
    assert entries["bin/busybox"][0].mode == 0o755


def unpack_rootfs(image: Image, into: Path) -> Path:
    """The image's layers applied in order, refusing any path that leaves `into`."""
    into.mkdir(parents=True)
    for _, blob in image.layers:
        for path, (member, data) in tar_members(blob).items():
            target = into / path
            assert ".." not in PurePosixPath(path).parts, path
            if member.isdir():
                target.mkdir(parents=True, exist_ok=True)
            elif member.issym():
                assert not member.linkname.startswith("/") and ".." not in member.linkname
                target.symlink_to(member.linkname)
            elif member.isfile():
                target.write_bytes(data)
                target.chmod(member.mode)
            else:
                pytest.fail(f"unexpected entry {path} of type {member.type!r}")
    return into


def run_init_container(rootfs: Path) -> Path:
    """The gateway's init container, emulated: its command from the manifest, as the
    image's user, chrooted into the image, with an empty writable volume at its mount."""
    if os.geteuid() != 0:
        pytest.fail("the init image check chroots, which needs root (make test runs as root)")
    container = gateway_init_container()
    mount = next(m["mountPath"] for m in container["volumeMounts"] if m["name"] == "wasm")
    volume = rootfs / mount.lstrip("/")
    volume.mkdir()
    volume.chmod(0o777)  # an emptyDir
    config = image_config(read_image(INIT))["config"]
    env = dict(e.split("=", 1) for e in config["Env"])
    chroot = shutil.which("chroot")
    assert chroot, "chroot (coreutils) is missing"
    # The environment is the image's own: PATH=/bin finds busybox's `cp`.
    result = subprocess.run([chroot, f"--userspec={config['User']}", str(rootfs),
                             *container["command"]],
                            env=env, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    copied = volume / "plugin.wasm"
    assert copied.stat().st_uid == int(config["User"].split(":")[0])
    return copied


@pytest.fixture(scope="module")
def unpacked(tmp_path_factory) -> dict[str, Path]:
    """Where each image's module ends up once unpacked, as Envoy would be given it."""
    work = tmp_path_factory.mktemp("oci")
    modules = {}
    for name in (PLUGIN, ARTIFACT):
        path = work / f"{name}.wasm"
        path.write_bytes(istio_fetch(read_image(name))[1])
        modules[name] = path
    modules[INIT] = run_init_container(unpack_rootfs(read_image(INIT), work / "init-rootfs"))
    return modules


def test_init_container_copies_the_module(unpacked):
    assert unpacked[INIT].read_bytes() == WASM.read_bytes()


@pytest.mark.parametrize("name", IMAGES)
def test_skopeo_reads_the_layout_whole(name, tmp_path):
    """skopeo pushes these images (docs/kubernetes.md): it must take each as it is."""
    image = read_image(name)
    out = tmp_path / "copy"
    result = subprocess.run(["skopeo", "copy", "--quiet", f"oci:{OCI_DIR / name}:{TAG}",
                             f"dir:{out}"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert (out / "manifest.json").read_bytes() == image.manifest_bytes
    for descriptor, blob in [(image.manifest["config"], image.config), *image.layers]:
        assert (out / descriptor["digest"].split(":")[1]).read_bytes() == blob


def test_building_again_gives_the_same_digests(tmp_path):
    if not BUSYBOX.is_file():
        pytest.fail(f"{BUSYBOX} is missing: run `make oci`")
    created = json.loads(read_image(PLUGIN).config)["created"]
    seconds = calendar.timegm(time.strptime(created, "%Y-%m-%dT%H:%M:%SZ"))
    subprocess.run([sys.executable, str(BUILD), "--module", str(WASM), "--busybox", str(BUSYBOX),
                    "--out", str(tmp_path), "--tag", TAG, "--epoch", str(seconds)],
                   check=True, capture_output=True, timeout=120)
    for name in IMAGES:
        assert read_image(name, tmp_path).manifest_bytes == read_image(name).manifest_bytes, name


@pytest.fixture(scope="module")
def backend(tmp_path_factory):
    """VictoriaMetrics with both tenants' series, and the OIDC provider with alice and bob."""
    work = tmp_path_factory.mktemp("oci-backend")
    vm = VictoriaMetrics(work)
    oidc = None
    try:
        vm.seed_s = int(time.time())
        vm.import_prometheus(seed.exposition(vm.seed_s * 1000))
        vm.force_flush()
        wait_until(lambda: len(vm.series('{__name__=~".+"}', vm.seed_s - 3600, vm.seed_s + 60))
                   == len(seed.ALL_SERIES), "the seeded series", proc=vm.proc)
        oidc = OidcProvider(work, {user: {"client_id": tenant} for user, tenant in USERS.items()})
        yield {"vm": vm, "oidc": oidc, "work": work,
               "tokens": {user: oidc.login(user) for user in USERS}}
    finally:
        if oidc is not None:
            oidc.stop()
        vm.stop()


@pytest.mark.parametrize("name", IMAGES)
def test_envoy_serves_with_the_unpacked_module(name, unpacked, backend):
    vm, oidc = backend["vm"], backend["oidc"]
    listen, admin = free_port(), free_port()
    config = envoy_config.render(envoy_config.ENVOY_DIR / "envoy.yaml", LISTEN_PORT=listen,
                                 ADMIN_PORT=admin, OIDC_PORT=oidc.port, BACKEND_PORT=vm.port,
                                 WASM_PATH=unpacked[name])
    proxy = Envoy(backend["work"], f"envoy-{name}", config, admin_port=admin, listen_port=listen)
    try:
        proxy.wait_ready()
        for user, tenant in USERS.items():
            r = requests.post(f"{proxy.url}/api/v1/query", timeout=10,
                              data={"query": '{__name__=~".+"}', "time": vm.seed_s},
                              headers={"Authorization": f"Bearer {backend['tokens'][user]}"})
            assert r.status_code == 200, (user, r.status_code, r.text[:300])
            got = {seed.as_key(s["metric"]) for s in r.json()["data"]["result"]}
            assert got == seed.keys_of(tenant), user
    finally:
        proxy.stop()



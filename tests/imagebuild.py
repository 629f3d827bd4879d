"""Build container images (layers, configs, manifests, indexes) as bytes and push them."""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import json
import posixpath
import random
import tarfile
import urllib.parse
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Literal

import requests

DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
IN_TOTO = "application/vnd.in-toto+json"
# Every manifest kind, as a registry client asks for them.
ACCEPT = ", ".join([OCI_INDEX, OCI_MANIFEST, DOCKER_MANIFEST_LIST, DOCKER_MANIFEST])

DEFAULT_MTIME = 1600000000
DEFAULT_CREATED = "2020-09-13T12:26:40Z"  # DEFAULT_MTIME as RFC 3339
WHITEOUT_PREFIX = ".wh."
OPAQUE_MARKER = ".wh..wh..opq"

Compression = Literal["gzip", "zstd", "none"]

_LAYER_MEDIA_TYPES: dict[tuple[bool, Compression], str] = {
    (False, "gzip"): DOCKER_LAYER_GZIP,
    (False, "none"): DOCKER_LAYER,
    (True, "gzip"): OCI_LAYER_GZIP,
    (True, "none"): OCI_LAYER,
    (True, "zstd"): OCI_LAYER_ZSTD,
}


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def random_bytes(n: int, seed: int | str = 0) -> bytes:
    """Deterministic incompressible content, so layer sizes are predictable."""
    return random.Random(seed).randbytes(n)


def _json_bytes(value: Any) -> bytes:
    # Indented like Docker's own output, so a client that re-serialises JSON
    # instead of keeping the bytes gets a different digest and is caught.
    return json.dumps(value, indent=3).encode()


# --- tar entries -------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Entry:
    """One member of a layer tarball."""

    path: str
    type: bytes
    data: bytes = b""
    linkname: str = ""
    mode: int = 0o644
    uid: int = 0
    gid: int = 0
    mtime: int = DEFAULT_MTIME

    def tarinfo(self) -> tarfile.TarInfo:
        info = tarfile.TarInfo(self.path)
        info.type = self.type
        info.size = len(self.data)
        info.linkname = self.linkname
        info.mode = self.mode
        info.uid, info.gid = self.uid, self.gid
        info.uname = info.gname = ""
        info.mtime = self.mtime
        return info


def file(
    path: str, data: bytes = b"", mode: int = 0o644, uid: int = 0, gid: int = 0,
    mtime: int = DEFAULT_MTIME,
) -> Entry:
    return Entry(path, tarfile.REGTYPE, data, "", mode, uid, gid, mtime)


def directory(
    path: str, mode: int = 0o755, uid: int = 0, gid: int = 0, mtime: int = DEFAULT_MTIME,
) -> Entry:
    return Entry(path, tarfile.DIRTYPE, b"", "", mode, uid, gid, mtime)


def symlink(
    path: str, target: str, uid: int = 0, gid: int = 0, mtime: int = DEFAULT_MTIME,
) -> Entry:
    return Entry(path, tarfile.SYMTYPE, b"", target, 0o777, uid, gid, mtime)


def hardlink(
    path: str, target: str, mode: int = 0o644, uid: int = 0, gid: int = 0,
    mtime: int = DEFAULT_MTIME,
) -> Entry:
    return Entry(path, tarfile.LNKTYPE, b"", target, mode, uid, gid, mtime)


def fifo(
    path: str, mode: int = 0o644, uid: int = 0, gid: int = 0, mtime: int = DEFAULT_MTIME,
) -> Entry:
    return Entry(path, tarfile.FIFOTYPE, b"", "", mode, uid, gid, mtime)


def whiteout(path: str, mtime: int = DEFAULT_MTIME) -> Entry:
    """Delete `path` from lower layers: an empty `dir/.wh.name` file."""
    parent, name = posixpath.split(path.rstrip("/"))
    return file(posixpath.join(parent, WHITEOUT_PREFIX + name), mtime=mtime)


def opaque(dirpath: str, mtime: int = DEFAULT_MTIME) -> Entry:
    """Hide everything lower layers put in `dirpath`."""
    return file(posixpath.join(dirpath.rstrip("/"), OPAQUE_MARKER), mtime=mtime)


def tar_bytes(entries: Sequence[Entry]) -> bytes:
    """An uncompressed PAX tar; identical entries always give identical bytes."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for entry in entries:
            tar.addfile(entry.tarinfo(), io.BytesIO(entry.data) if entry.data else None)
    return buf.getvalue()


# --- layers, images, indexes -------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Layer:
    tar: bytes
    blob: bytes
    media_type: str
    digest: str
    diff_id: str
    size: int
    annotations: Mapping[str, str] = dataclasses.field(default_factory=dict)

    def descriptor(self) -> dict[str, Any]:
        return _descriptor(self.media_type, self.digest, self.size, self.annotations)


def compress(data: bytes, compression: Compression) -> bytes:
    if compression == "gzip":
        return gzip.compress(data, mtime=0)
    if compression == "zstd":
        import zstandard  # optional: only the zstd tests need it

        return zstandard.ZstdCompressor().compress(data)
    if compression == "none":
        return data
    raise ValueError(f"unknown compression {compression!r}")


def make_layer(
    content: Sequence[Entry] | bytes, compression: Compression = "gzip", *, oci: bool = False,
) -> Layer:
    """A layer from tar entries or ready-made uncompressed tar bytes."""
    media_type = _LAYER_MEDIA_TYPES.get((oci, compression))
    if media_type is None:
        raise ValueError(f"no {'OCI' if oci else 'Docker'} layer media type for {compression!r}")
    tar = content if isinstance(content, bytes) else tar_bytes(content)
    blob = compress(tar, compression)
    return Layer(tar, blob, media_type, sha256(blob), sha256(tar), len(blob))


def _raw_layer(data: bytes, media_type: str, annotations: Mapping[str, str]) -> Layer:
    """A non-tar layer (e.g. an in-toto statement): its diff_id is its digest."""
    digest = sha256(data)
    return Layer(data, data, media_type, digest, digest, len(data), dict(annotations))


@dataclasses.dataclass(frozen=True)
class Platform:
    os: str
    architecture: str
    variant: str | None = None

    def as_json(self) -> dict[str, str]:
        value = {"architecture": self.architecture, "os": self.os}
        if self.variant:
            value["variant"] = self.variant
        return value


@dataclasses.dataclass(frozen=True)
class Image:
    config: bytes
    config_digest: str
    config_media_type: str
    manifest: bytes
    manifest_digest: str
    manifest_media_type: str
    layers: tuple[Layer, ...]
    platform: Platform

    @property
    def diff_ids(self) -> list[str]:
        return [layer.diff_id for layer in self.layers]

    @property
    def config_json(self) -> dict[str, Any]:
        return json.loads(self.config)

    def descriptor(self, annotations: Mapping[str, str] | None = None) -> dict[str, Any]:
        value = _descriptor(
            self.manifest_media_type, self.manifest_digest, len(self.manifest), annotations,
        )
        value["platform"] = self.platform.as_json()
        return value

    def blobs(self) -> Iterator[tuple[str, bytes]]:
        """(digest, bytes) of every blob the manifest references."""
        for layer in self.layers:
            yield layer.digest, layer.blob
        yield self.config_digest, self.config


def _descriptor(
    media_type: str, digest: str, size: int, annotations: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    value: dict[str, Any] = {"mediaType": media_type, "digest": digest, "size": size}
    if annotations:
        value["annotations"] = dict(annotations)
    return value


def _assemble_image(
    config: dict[str, Any], layers: Sequence[Layer], oci: bool, platform: Platform,
) -> Image:
    config_bytes = _json_bytes(config)
    config_type = OCI_CONFIG if oci else DOCKER_CONFIG
    manifest_type = OCI_MANIFEST if oci else DOCKER_MANIFEST
    manifest = _json_bytes({
        "schemaVersion": 2,
        "mediaType": manifest_type,
        "config": _descriptor(config_type, sha256(config_bytes), len(config_bytes)),
        "layers": [layer.descriptor() for layer in layers],
    })
    return Image(
        config_bytes, sha256(config_bytes), config_type,
        manifest, sha256(manifest), manifest_type, tuple(layers), platform,
    )


def make_image(
    layers: Sequence[Layer],
    *,
    oci: bool = False,
    os: str = "linux",
    architecture: str = "amd64",
    variant: str | None = None,
    config_extra: Mapping[str, Any] | None = None,
) -> Image:
    """An image manifest and config; `config_extra` replaces top-level config keys."""
    platform = Platform(os, architecture, variant)
    config: dict[str, Any] = {
        **platform.as_json(),
        "created": DEFAULT_CREATED,
        "config": {
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "Cmd": ["/bin/sh"],
        },
        "rootfs": {"type": "layers", "diff_ids": [layer.diff_id for layer in layers]},
        "history": [
            {"created": DEFAULT_CREATED, "created_by": f"imagebuild layer {n}"}
            for n in range(len(layers))
        ],
        **(config_extra or {}),
    }
    return _assemble_image(config, layers, oci, platform)


@dataclasses.dataclass(frozen=True)
class Index:
    manifest: bytes
    manifest_digest: str
    manifest_media_type: str
    images: tuple[Image, ...]
    attestations: tuple[Image, ...] = ()

    @property
    def children(self) -> tuple[Image, ...]:
        return self.images + self.attestations


def small_image(seed: int, compression: str = "gzip", oci: bool = False,
                size: int = 30_000, **kwargs: Any) -> Image:
    """Two layers: a base every such image shares byte for byte, and `size`
    random bytes of its own."""
    base = make_layer([directory("etc"), file("etc/os-release", b"ID=t\n")],
                      compression, oci=oci)
    data = make_layer([file(f"data/{seed}", random_bytes(size, seed))],
                      compression, oci=oci)
    return make_image([base, data], oci=oci, **kwargs)


def make_attestation(image: Image) -> Image:
    """A buildkit-style provenance attestation manifest for `image`."""
    statement = _json_bytes({
        "_type": "https://in-toto.io/Statement/v0.1",
        "predicateType": "https://slsa.dev/provenance/v0.2",
        "subject": [{"name": "_", "digest": {"sha256": image.manifest_digest.split(":")[1]}}],
        "predicate": {"builder": {"id": "imagebuild"}},
    })
    layer = _raw_layer(
        statement, IN_TOTO, {"in-toto.io/predicate-type": "https://slsa.dev/provenance/v0.2"},
    )
    platform = Platform("unknown", "unknown")
    config = {
        **platform.as_json(),
        "config": {},
        "rootfs": {"type": "layers", "diff_ids": [layer.diff_id]},
    }
    return _assemble_image(config, [layer], True, platform)


def make_index(images: Sequence[Image], *, oci: bool = False, attestations: bool = False) -> Index:
    """A Docker manifest list or OCI index; attestations are appended like buildkit does."""
    if attestations and not oci:
        # Manifest lists cannot carry annotations; buildkit switches to OCI too.
        raise ValueError("attestations need an OCI index (oci=True)")
    attached = tuple(make_attestation(image) for image in images) if attestations else ()
    entries = [image.descriptor() for image in images]
    entries += [
        attestation.descriptor({
            "vnd.docker.reference.digest": image.manifest_digest,
            "vnd.docker.reference.type": "attestation-manifest",
        })
        for image, attestation in zip(images, attached)
    ]
    media_type = OCI_INDEX if oci else DOCKER_MANIFEST_LIST
    manifest = _json_bytes({"schemaVersion": 2, "mediaType": media_type, "manifests": entries})
    return Index(manifest, sha256(manifest), media_type, tuple(images), attached)


# --- pushing (registry API v2) -----------------------------------------------


class PushError(RuntimeError):
    """The registry refused something we pushed."""


def loopback_session() -> requests.Session:
    session = requests.Session()
    # Test registries live on loopback: never route them through a proxy from the env.
    session.trust_env = False
    return session


def _session(session: requests.Session | None) -> requests.Session:
    return loopback_session() if session is None else session


def _check(response: requests.Response, *expected: int) -> requests.Response:
    if response.status_code not in expected:
        raise PushError(
            f"{response.request.method} {response.url} -> {response.status_code}: "
            f"{response.text.strip()}"
        )
    return response


def push_blob(
    base_url: str, repo: str, data: bytes, *, session: requests.Session | None = None,
) -> str:
    """Monolithic upload (POST then PUT); skipped when the registry has the blob."""
    http = _session(session)
    digest = sha256(data)
    if http.head(f"{base_url}/v2/{repo}/blobs/{digest}").status_code == 200:
        return digest
    started = _check(http.post(f"{base_url}/v2/{repo}/blobs/uploads/"), 202)
    location = urllib.parse.urljoin(f"{base_url}/", started.headers["Location"])
    _check(
        http.put(
            location, params={"digest": digest}, data=data,
            headers={"Content-Type": "application/octet-stream"},
        ),
        201,
    )
    return digest


def push_manifest(
    base_url: str, repo: str, manifest: bytes, media_type: str, reference: str,
    *, session: requests.Session | None = None,
) -> str:
    """PUT a manifest under a tag or digest; return the digest the registry computed."""
    response = _check(
        _session(session).put(
            f"{base_url}/v2/{repo}/manifests/{reference}", data=manifest,
            headers={"Content-Type": media_type},
        ),
        201,
    )
    digest = response.headers.get("Docker-Content-Digest", "")
    if digest != sha256(manifest):
        raise PushError(f"registry stored {repo}:{reference} as {digest!r}, not {sha256(manifest)}")
    return digest


def push_image(
    base_url: str, repo: str, image: Image, tag: str | None = None,
    *, session: requests.Session | None = None,
) -> str:
    """Push blobs then manifest (by tag, else by digest); return the manifest digest."""
    http = _session(session)
    for _, blob in image.blobs():
        push_blob(base_url, repo, blob, session=http)
    return push_manifest(
        base_url, repo, image.manifest, image.manifest_media_type,
        tag or image.manifest_digest, session=http,
    )


def push_index(
    base_url: str, repo: str, index: Index, tag: str | None = None,
    *, session: requests.Session | None = None,
) -> str:
    """Push every child manifest by digest, then the index; return the index digest."""
    http = _session(session)
    for child in index.children:
        push_image(base_url, repo, child, session=http)
    return push_manifest(
        base_url, repo, index.manifest, index.manifest_media_type,
        tag or index.manifest_digest, session=http,
    )

"""The bundle format, defined once for its writer and every reader.

A bundle is an OCI image layout (image-spec: `oci-layout`, `index.json`,
`blobs/<algorithm>/<hex>`) holding each manifest, index, config and layer
exactly as the registry served it, so every digest survives the crossing.
Beside it, a docker `manifest.json` (and `repositories`) points into the
same blobs, so that one `tar -cf x.tar -C DIR .` loads in docker (which
reads manifest.json), containerd (which prefers index.json and takes each
image's name from its `io.containerd.image.name` annotation) and podman.
This is the shape Docker 25+ gives `docker save`.
"""

import dataclasses
import json
from typing import Any

from occystrap.digest import Digest
from occystrap.errors import InvalidReference, StoreError
from occystrap.manifest import OCI_INDEX, Descriptor

OCI_LAYOUT = "oci-layout"
INDEX = "index.json"
DOCKER_MANIFEST = "manifest.json"
REPOSITORIES = "repositories"
BLOBS = "blobs"
LAYOUT_VERSION = "1.0.0"
# Hidden, so `tar -cf x.tar -C DIR .` carries it harmlessly and `*` skips it.
LOCK = ".occystrap.lock"
# The name containerd (and so k3s, rke2 and Docker's containerd store) gives
# an image, and the OCI tag that skopeo and podman look up.
IMAGE_NAME = "io.containerd.image.name"
REF_NAME = "org.opencontainers.image.ref.name"
# What the name pointed at in the registry when fetched (an index, when one
# platform was taken from it), so a rerun can tell from a manifest HEAD
# that nothing changed.
SOURCE_DIGEST = "org.occystrap.source.digest"


def blob_path(digest: Digest) -> str:
    return f"{BLOBS}/{digest.algorithm}/{digest.hex}"


def partial_path(digest: Digest) -> str:
    """Where a blob grows while it downloads: hidden, and kept for a resume."""
    return f"{BLOBS}/{digest.algorithm}/.{digest.hex}.partial"


def layout_json() -> bytes:
    return _dumps({"imageLayoutVersion": LAYOUT_VERSION})


@dataclasses.dataclass(frozen=True)
class Entry:
    """One name the bundle holds: an image manifest or a whole index.

    `name` is the fully qualified name (docker.io/library/busybox:1.36, or
    REPO@sha256:… for an image pulled by digest alone); `repo_tag` is the
    name docker gives it (busybox:1.36), None for a digest pull.
    """

    descriptor: Descriptor
    name: str
    repo_tag: str | None
    # The docker-loadable image behind the name: config and layer blobs.
    config: Digest
    layers: tuple[Digest, ...]
    source: Digest | None = None

    @property
    def tag(self) -> str | None:
        return self.repo_tag.rsplit(":", 1)[1] if self.repo_tag else None

    def index_descriptor(self) -> dict[str, Any]:
        descriptor = self.descriptor
        doc: dict[str, Any] = {
            "mediaType": descriptor.media_type,
            "digest": str(descriptor.digest),
            "size": descriptor.size,
        }
        annotations = {IMAGE_NAME: self.name}
        if self.tag:
            annotations[REF_NAME] = self.tag
        if self.source:
            annotations[SOURCE_DIGEST] = str(self.source)
        doc["annotations"] = annotations
        if descriptor.platform is not None:
            platform = descriptor.platform
            doc["platform"] = {"architecture": platform.architecture,
                               "os": platform.os}
            if platform.variant:
                doc["platform"]["variant"] = platform.variant
        return doc

    def docker_entry(self) -> dict[str, Any]:
        return {
            "Config": blob_path(self.config),
            "RepoTags": [self.repo_tag] if self.repo_tag else [],
            "Layers": [blob_path(layer) for layer in self.layers],
        }


def index_json(entries: list[Entry]) -> bytes:
    return _dumps({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [entry.index_descriptor() for entry in entries],
    })


def docker_manifest_json(entries: list[Entry]) -> bytes:
    return _dumps([entry.docker_entry() for entry in entries])


def repositories_json(entries: list[Entry]) -> bytes:
    """Legacy name -> tag -> top layer map, as docker save writes it."""
    doc: dict[str, dict[str, str]] = {}
    for entry in entries:
        if entry.repo_tag and entry.layers:
            name, tag = entry.repo_tag.rsplit(":", 1)
            doc.setdefault(name, {})[tag] = entry.layers[-1].hex
    return _dumps(doc)


def parse_entries(index: bytes, docker: bytes, where: str) -> list[Entry]:
    """The bundle's entries from its index.json and manifest.json.

    The two files are written together, entry for entry; anything else
    means the bundle was damaged or written by something else.
    """
    try:
        index_doc = json.loads(index)
        docker_doc = json.loads(docker)
    except (ValueError, UnicodeDecodeError, RecursionError) as e:
        raise StoreError(f"{where}: {INDEX} or {DOCKER_MANIFEST} is not "
                         f"valid JSON ({e})") from None
    manifests = index_doc.get("manifests") \
        if isinstance(index_doc, dict) else None
    if not isinstance(manifests, list) or not isinstance(docker_doc, list) \
            or len(manifests) != len(docker_doc):
        raise StoreError(
            f"{where}: {INDEX} and {DOCKER_MANIFEST} do not describe the "
            "same images; it was not written by occystrap, or is damaged")
    entries = []
    for number, (raw, docker_entry) in enumerate(zip(manifests, docker_doc)):
        what = f"{where}: {INDEX} entry {number + 1}"
        try:
            descriptor = Descriptor.parse(raw, what)
            annotations = descriptor.annotations
            name = annotations.get(IMAGE_NAME)
            tags = docker_entry.get("RepoTags") or []
            config = blob_digest(docker_entry.get("Config"))
            layers = tuple(blob_digest(p)
                           for p in docker_entry.get("Layers") or [])
            source = annotations.get(SOURCE_DIGEST)
            source_digest = Digest.parse(source) if source else None
        except (AttributeError, InvalidReference, StoreError) as e:
            raise StoreError(f"{what} is damaged: {e}") from None
        if not isinstance(name, str) or not isinstance(tags, list) \
                or len(tags) > 1 or not all(isinstance(t, str) for t in tags):
            raise StoreError(f"{what} has no usable name")
        entries.append(Entry(descriptor, name, tags[0] if tags else None,
                             config, layers, source_digest))
    return entries


def blob_digest(path: object) -> Digest:
    """The digest a `blobs/<algorithm>/<hex>` path names."""
    prefix = f"{BLOBS}/"
    if not isinstance(path, str) or not path.startswith(prefix) \
            or path.count("/") != 2:
        raise StoreError(f"{path!r} is not a blob path")
    algorithm, hexpart = path[len(prefix):].split("/")
    return Digest.parse(f"{algorithm}:{hexpart}")


def _dumps(doc: object) -> bytes:
    return json.dumps(doc, indent=2).encode() + b"\n"

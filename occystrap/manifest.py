"""Manifests, indexes and image configs: parsing, validation, platforms."""

import dataclasses
from typing import Any

from occystrap import safefile
from occystrap.digest import Digest
from occystrap.errors import InvalidReference, ManifestError, PlatformNotFound

DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_SCHEMA1 = ("application/vnd.docker.distribution.manifest.v1+json",
                  "application/vnd.docker.distribution.manifest.v1+prettyjws")
IMAGE_MANIFESTS = (DOCKER_MANIFEST, OCI_MANIFEST)
INDEXES = (DOCKER_LIST, OCI_INDEX)
ACCEPT = ", ".join(IMAGE_MANIFESTS + INDEXES)
# The distribution spec suggests registries accept manifests up to 4 MiB.
MAX_MANIFEST_SIZE = 4 << 20
MAX_CONFIG_SIZE = 16 << 20

CONFIG_TYPES = ("application/vnd.docker.container.image.v1+json",
                "application/vnd.oci.image.config.v1+json")
LAYER_TYPES = (
    "application/vnd.docker.image.rootfs.diff.tar",
    "application/vnd.docker.image.rootfs.diff.tar.gzip",
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
    "application/vnd.oci.image.layer.v1.tar",
    "application/vnd.oci.image.layer.v1.tar+gzip",
    "application/vnd.oci.image.layer.v1.tar+zstd",
    "application/vnd.oci.image.layer.nondistributable.v1.tar",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
)
PLAIN_LAYER_TYPES = (
    "application/vnd.docker.image.rootfs.diff.tar",
    "application/vnd.oci.image.layer.v1.tar",
    "application/vnd.oci.image.layer.nondistributable.v1.tar",
)
GZIP_LAYER_TYPES = (
    "application/vnd.docker.image.rootfs.diff.tar.gzip",
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
    "application/vnd.oci.image.layer.v1.tar+gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
)
_ATTESTATION = "attestation-manifest"

# Variants a platform has when none is written, as containerd normalises.
_DEFAULT_VARIANTS = {"arm64": "v8", "arm": "v7"}


@dataclasses.dataclass(frozen=True)
class Platform:
    os: str = "linux"
    architecture: str = "amd64"
    variant: str | None = None

    @classmethod
    def parse(cls, text: str) -> "Platform":
        parts = text.split("/")
        if len(parts) not in (2, 3) or not all(parts):
            raise InvalidReference(
                f"invalid platform {text!r}: expected OS/ARCH[/VARIANT], "
                "e.g. linux/amd64 or linux/arm64/v8")
        return cls(*parts)

    def matches(self, other: "Platform | None") -> bool:
        """Does `other` (from an index) satisfy this requested platform?

        An index entry without a platform satisfies none.
        """
        if other is None:
            return False
        if (self.os, self.architecture) != (other.os, other.architecture):
            return False
        if self.variant is None:
            return True
        default = _DEFAULT_VARIANTS.get(self.architecture)
        return (other.variant or default) == self.variant

    def __str__(self) -> str:
        parts = [self.os, self.architecture] + (
            [self.variant] if self.variant else [])
        return "/".join(parts)


@dataclasses.dataclass(frozen=True)
class Descriptor:
    media_type: str
    digest: Digest
    size: int
    platform: Platform | None = None
    annotations: dict = dataclasses.field(default_factory=dict, hash=False)

    @classmethod
    def parse(cls, raw: Any, what: str) -> "Descriptor":
        if not isinstance(raw, dict):
            raise ManifestError(f"{what} is not a JSON object")
        digest = raw.get("digest")
        size = raw.get("size")
        media_type = raw.get("mediaType", "")
        if not isinstance(digest, str):
            raise ManifestError(f"{what} has no digest")
        try:
            parsed = Digest.parse(digest)
        except InvalidReference as e:
            raise ManifestError(f"{what}: {e}") from None
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise ManifestError(f"{what} has no valid size")
        if not isinstance(media_type, str):
            raise ManifestError(f"{what} has an invalid mediaType")
        platform = None
        if isinstance(raw.get("platform"), dict):
            p = raw["platform"]
            platform = Platform(str(p.get("os", "")),
                                str(p.get("architecture", "")),
                                p.get("variant") or None)
        annotations = raw.get("annotations")
        return cls(media_type, parsed, size, platform,
                   annotations if isinstance(annotations, dict) else {})


@dataclasses.dataclass(frozen=True)
class ImageManifest:
    media_type: str
    config: Descriptor
    layers: tuple[Descriptor, ...]


@dataclasses.dataclass(frozen=True)
class ImageIndex:
    media_type: str
    manifests: tuple[Descriptor, ...]

    def images(self) -> list[Descriptor]:
        """Entries that are runnable images, not attestations or unknowns."""
        return [d for d in self.manifests
                if d.annotations.get("vnd.docker.reference.type")
                != _ATTESTATION
                and d.platform is not None
                and d.platform.os != "unknown"]

    def select(self, wanted: Platform) -> Descriptor:
        # (entry, its platform): images() only keeps entries that have one.
        candidates = [(d, d.platform) for d in self.images()
                      if d.platform is not None
                      and wanted.matches(d.platform)]
        if wanted.variant is None and len(candidates) > 1:
            # Prefer the architecture's default variant (arm64 -> v8).
            default = _DEFAULT_VARIANTS.get(wanted.architecture)
            preferred = [(d, p) for d, p in candidates
                         if (p.variant or default) == default]
            candidates = preferred or candidates
        if not candidates:
            available = ", ".join(sorted({str(d.platform)
                                          for d in self.images()}))
            raise PlatformNotFound(
                f"no image for platform {wanted} in this index; available: "
                f"{available or 'none'}; choose one with --platform")
        return candidates[0][0]


def _load_json(data: bytes, what: str) -> dict:
    try:
        parsed = safefile.loads(data)
    except (ValueError, UnicodeDecodeError) as e:
        raise ManifestError(f"{what} is not valid JSON: {e}") from None
    if not isinstance(parsed, dict):
        raise ManifestError(f"{what} is not a JSON object")
    return parsed


def parse_manifest(data: bytes,
                   content_type: str | None) -> ImageManifest | ImageIndex:
    """Parse a manifest or index, trusting its body over the header."""
    doc = _load_json(data, "manifest")
    media_type = doc.get("mediaType") or (content_type or "").split(";")[0]
    if doc.get("schemaVersion") == 1 or media_type in DOCKER_SCHEMA1:
        raise ManifestError(
            "the registry offers only a Docker schema 1 manifest, which is "
            "obsolete and not supported; push the image again with a "
            "current client")
    if doc.get("schemaVersion") != 2:
        raise ManifestError(
            f"unsupported manifest schemaVersion {doc.get('schemaVersion')!r}")
    has_layers = "layers" in doc
    has_manifests = "manifests" in doc
    if has_layers and has_manifests:
        raise ManifestError(
            "ambiguous manifest: it has both 'layers' and 'manifests'")
    if media_type in INDEXES or (not media_type and has_manifests):
        if not isinstance(doc.get("manifests"), list):
            raise ManifestError("index has no 'manifests' list")
        return ImageIndex(media_type or OCI_INDEX, tuple(
            Descriptor.parse(m, f"index entry {i}")
            for i, m in enumerate(doc["manifests"])))
    if media_type in IMAGE_MANIFESTS or (not media_type and has_layers):
        if "config" not in doc:
            raise ManifestError("manifest has no config")
        if not isinstance(doc.get("layers"), list):
            raise ManifestError("manifest has no 'layers' list")
        config = Descriptor.parse(doc["config"], "manifest config")
        layers = tuple(Descriptor.parse(layer, f"layer {i}")
                       for i, layer in enumerate(doc["layers"]))
        for i, layer in enumerate(layers):
            if layer.media_type not in LAYER_TYPES:
                raise ManifestError(
                    f"layer {i} has unsupported media type "
                    f"{layer.media_type!r}; this is not a container image "
                    "occystrap can save")
        if config.media_type and config.media_type not in CONFIG_TYPES:
            raise ManifestError(
                f"unsupported config media type {config.media_type!r}; "
                "this artifact is not a container image")
        return ImageManifest(media_type or OCI_MANIFEST, config, layers)
    raise ManifestError(f"unsupported manifest media type {media_type!r}")


@dataclasses.dataclass(frozen=True)
class ImageConfig:
    platform: Platform
    diff_ids: tuple[Digest, ...]


def parse_config(data: bytes) -> ImageConfig:
    doc = _load_json(data, "image config")
    rootfs = doc.get("rootfs")
    if not isinstance(rootfs, dict) or not isinstance(
            rootfs.get("diff_ids"), list):
        raise ManifestError("image config has no rootfs.diff_ids")
    try:
        diff_ids = tuple(Digest.parse(d) for d in rootfs["diff_ids"])
    except InvalidReference as e:
        raise ManifestError(f"image config: {e}") from None
    return ImageConfig(
        Platform(str(doc.get("os", "")), str(doc.get("architecture", "")),
                 doc.get("variant") or None),
        diff_ids)


def artifact_blobs(data: bytes, what: str) -> list[Descriptor]:
    """The config and layer blobs any manifest names, whatever they hold.

    For carrying manifests that are not container images (attestations,
    signatures) as they are, without judging their media types.
    """
    doc = _load_json(data, what)
    raw = ([doc["config"]] if "config" in doc else []) + list(
        doc.get("layers") or [])
    return [Descriptor.parse(d, f"{what} blob {i}")
            for i, d in enumerate(raw)]


def check_layers(manifest: ImageManifest, config: ImageConfig,
                 what: str) -> None:
    """A manifest and its config must describe the same layers."""
    if len(config.diff_ids) != len(manifest.layers):
        raise ManifestError(
            f"{what}: the manifest lists {len(manifest.layers)} "
            f"{'layer' if len(manifest.layers) == 1 else 'layers'} but "
            f"the config lists {len(config.diff_ids)} diff_ids")


def check_platform(wanted: Platform, found: Platform, required: bool,
                   what: str) -> bool:
    """Whether a single-platform image suits the platform asked for.

    Only an error when the user asked for a platform; by default an image
    of another platform is taken as it is (the caller may warn).
    """
    if wanted.matches(found):
        return True
    if required:
        raise PlatformNotFound(
            f"{what} is a single-platform image for {found}, not {wanted}")
    return False

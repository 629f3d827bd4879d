"""Parsing and normalising registry names, repositories, tags and digests."""

import dataclasses
import ipaddress
import re

from occystrap.digest import Digest
from occystrap.errors import InvalidReference

DOCKER_HUB_HOST = "registry-1.docker.io"
# The names people (and docker's config.json) use for Docker Hub.
_HUB_ALIASES = {"docker.io", "index.docker.io", "registry-1.docker.io",
                "registry.hub.docker.com", "hub.docker.com"}

# From the distribution reference grammar.
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
# \Z, not $: '$' also matches before a final newline, and a name that
# ends in one would become a file name in a shared directory.
_REPOSITORY_RE = re.compile(rf"{_COMPONENT}(?:/{_COMPONENT})*\Z")
_TAG_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}\Z")
# DNS labels are 1 to 63 characters; the whole name at most 253.
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOST_RE = re.compile(
    rf"(?P<name>{_LABEL}(?:\.{_LABEL})*|\[(?P<ip6>[0-9A-Fa-f:.]+)\])"
    r"(?::(?P<port>[0-9]{1,5}))?\Z")
# user:password@ before a host: never repeated back, not even in an error.
_USERINFO_RE = re.compile(r"\A([A-Za-z]+://)?[^/]*@")


@dataclasses.dataclass(frozen=True)
class Registry:
    """Where a registry lives: host[:port] and, if the user said, a scheme."""

    host: str
    scheme: str | None = None

    @classmethod
    def parse(cls, text: str) -> "Registry":
        original = _redacted(text)
        scheme = None
        lowered = text.lower()
        for prefix in ("https://", "http://"):
            if lowered.startswith(prefix):
                scheme = prefix[:-3]
                text = text[len(prefix):]
        text = text.rstrip("/")
        if "@" in text:
            raise InvalidReference(
                f"invalid registry {original!r}: credentials do not belong "
                "in REGISTRY; give them with --username and "
                "--password-stdin")
        match = _HOST_RE.match(text)
        if not match:
            raise InvalidReference(
                f"invalid registry {original!r}: expected HOST or HOST:PORT, "
                "e.g. registry-1.docker.io, quay.io or localhost:5000")
        _check_host(match, original)
        host = text.lower()
        if host in _HUB_ALIASES:
            host = DOCKER_HUB_HOST
        return cls(host, scheme)

    @property
    def hostname(self) -> str:
        if self.host.startswith("["):
            return self.host[1:self.host.index("]")]
        return self.host.rsplit(":", 1)[0] if ":" in self.host else self.host

    @property
    def is_docker_hub(self) -> bool:
        return self.host == DOCKER_HUB_HOST

    @property
    def is_local(self) -> bool:
        """Loopback registries may speak plain HTTP, as docker allows."""
        name = self.hostname
        if name == "localhost" or name.endswith(".localhost"):
            return True
        try:
            return ipaddress.ip_address(name).is_loopback
        except ValueError:
            return False

    @property
    def display_name(self) -> str:
        """The registry part docker shows in image names."""
        return "docker.io" if self.is_docker_hub else self.host

    def __str__(self) -> str:
        return self.host


@dataclasses.dataclass(frozen=True)
class ImageReference:
    registry: Registry
    repository: str
    tag: str | None = None
    digest: Digest | None = None

    @classmethod
    def parse(cls, registry: str, image: str, tag: str) -> "ImageReference":
        """REGISTRY, IMAGE and TAG as the commands take them. TAG is a tag,
        a digest, or TAG@DIGEST: named by the tag, pinned by the digest."""
        reg = Registry.parse(registry)
        repository = parse_repository(image, reg)
        name, at, pinned = tag.partition("@")
        if not at and ":" in tag:
            return cls(reg, repository, digest=Digest.parse(tag))
        if not _TAG_RE.match(name):
            raise InvalidReference(
                f"invalid tag {name!r}: tags are up to 128 letters, digits, "
                "'_', '.' or '-', not starting with '.' or '-'"
                + (", then optionally @DIGEST" if at else ""))
        return cls(reg, repository, tag=name,
                   digest=Digest.parse(pinned) if at else None)

    @classmethod
    def parse_name(cls, text: str) -> "ImageReference":
        """One string as docker takes it: [HOST[:PORT]/]REPO[:TAG][@DIGEST].

        The first component is a registry only if it looks like a host
        (a '.' or ':' in it, or 'localhost'), so `team/app` is on Docker
        Hub, as `library/busybox` is for `busybox`. No tag and no digest
        means `latest`; a tag and a digest name the image by the tag and
        pin it by the digest.
        """
        rest, at, digest = text.partition("@")
        first, slash, remainder = rest.partition("/")
        if slash and ("." in first or ":" in first or first == "localhost"):
            registry, rest = Registry.parse(first), remainder
        else:
            registry = Registry.parse(DOCKER_HUB_HOST)
        name, colon, tag = rest.rpartition(":")
        if not colon or "/" in tag:
            name, colon, tag = rest, "", ""
        what = f"invalid image reference {text!r}"
        if not name or (colon and not tag) or (at and not digest):
            raise InvalidReference(
                f"{what}: expected [HOST[:PORT]/]REPOSITORY[:TAG][@DIGEST], "
                "e.g. busybox:1.36 or quay.io/org/app@sha256:…")
        try:
            repository = parse_repository(name, registry)
            pinned = Digest.parse(digest) if digest else None
        except InvalidReference as e:
            raise InvalidReference(f"{what}: {e}") from None
        if tag and not _TAG_RE.match(tag):
            raise InvalidReference(
                f"{what}: tags are up to 128 letters, digits, '_', '.' or "
                "'-', not starting with '.' or '-'")
        if not tag and not pinned:
            tag = "latest"
        return cls(registry, repository, tag=tag or None, digest=pinned)

    @property
    def reference(self) -> str:
        """The tag or digest, as used in a manifest URL."""
        return str(self.digest) if self.digest else str(self.tag)

    @property
    def short_name(self) -> str:
        """The repository as docker names it (no 'library/' on the Hub)."""
        if self.registry.is_docker_hub:
            prefix = "library/"
            if self.repository.startswith(prefix):
                return self.repository[len(prefix):]
            return self.repository
        return f"{self.registry.host}/{self.repository}"

    @property
    def repo_tag(self) -> str | None:
        """The name `docker pull` would give this image, or None for digests.

        Like docker save and crane, an image pulled by digest carries no tag.
        """
        if self.tag is None:
            return None
        return f"{self.short_name}:{self.tag}"

    @property
    def full_name(self) -> str:
        """The fully qualified name containerd gives the image, e.g.
        docker.io/library/busybox:1.36 or host:5000/app@sha256:…."""
        name = f"{self.registry.display_name}/{self.repository}"
        return f"{name}:{self.tag}" if self.tag else f"{name}@{self.digest}"

    def __str__(self) -> str:
        name = f"{self.registry.display_name}/{self.repository}"
        tag = f":{self.tag}" if self.tag else ""
        pinned = f"@{self.digest}" if self.digest else ""
        return f"{name}{tag}{pinned}"


def _check_host(match: re.Match, original: str) -> None:
    """What the pattern cannot say: name length, port range, IPv6 form."""
    what = f"invalid registry {original!r}"
    name, ip6, port = match.group("name", "ip6", "port")
    if name is not None and len(name) > 253:
        raise InvalidReference(
            f"{what}: a host name is at most 253 characters")
    if ip6 is not None:
        try:
            ipaddress.IPv6Address(ip6)
        except ValueError:
            raise InvalidReference(
                f"{what}: [{ip6}] is not an IPv6 address") from None
    if port is not None and not 1 <= int(port) <= 65535:
        raise InvalidReference(
            f"{what}: port {int(port)} is not between 1 and 65535")


def _redacted(text: str) -> str:
    return _USERINFO_RE.sub(r"\1***@", text)


def parse_repository(image: str, registry: Registry) -> str:
    if "@" in image or (":" in image and "/" not in image.split(":")[-1]):
        raise InvalidReference(
            f"invalid image {image!r}: give the tag or digest as its own "
            "argument, e.g. 'library/busybox latest'")
    if not _REPOSITORY_RE.match(image) or len(image) > 255:
        raise InvalidReference(
            f"invalid image name {image!r}: use lowercase letters, digits "
            "and separators ('.', '_', '-', '/'), e.g. library/busybox")
    if registry.is_docker_hub and "/" not in image:
        return f"library/{image}"
    return image


def parse_list(lines: list[str], where: str) -> list[ImageReference]:
    """References one per line; blank lines and '#' comments are skipped.

    A bad line fails the whole list, naming where it is, before anything
    is downloaded.
    """
    references = []
    for number, line in enumerate(lines, 1):
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        try:
            references.append(ImageReference.parse_name(text))
        except InvalidReference as e:
            raise InvalidReference(f"{where}, line {number}: {e}") from None
    return references

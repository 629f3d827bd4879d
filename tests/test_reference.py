"""Reference parsing: one table of input -> fields, one of rejected input."""

import pytest

from occystrap.digest import Digest
from occystrap.errors import InvalidReference
from occystrap.reference import ImageReference, Registry

HEX = "a" * 64


@pytest.mark.parametrize(
    "registry, image, tag, host, scheme, repository, reference, repo_tag", [
        ("registry-1.docker.io", "library/busybox", "latest",
         "registry-1.docker.io", None, "library/busybox", "latest",
         "busybox:latest"),
        ("docker.io", "busybox", "1.36", "registry-1.docker.io", None,
         "library/busybox", "1.36", "busybox:1.36"),
        ("index.docker.io", "homeassistant/home-assistant", "stable",
         "registry-1.docker.io", None, "homeassistant/home-assistant",
         "stable", "homeassistant/home-assistant:stable"),
        ("quay.io", "ukhomeofficedigital/centos-base", "latest", "quay.io",
         None, "ukhomeofficedigital/centos-base", "latest",
         "quay.io/ukhomeofficedigital/centos-base:latest"),
        ("localhost:5000", "app", "v1", "localhost:5000", None, "app", "v1",
         "localhost:5000/app:v1"),
        ("http://127.0.0.1:5000/", "team/app", "v1", "127.0.0.1:5000",
         "http", "team/app", "v1", "127.0.0.1:5000/team/app:v1"),
        ("HTTPS://Registry.Example.com", "a/b/c", "V_1.0-x",
         "registry.example.com", "https", "a/b/c", "V_1.0-x",
         "registry.example.com/a/b/c:V_1.0-x"),
        ("registry-1.docker.io", "library/busybox", f"sha256:{HEX}",
         "registry-1.docker.io", None, "library/busybox", f"sha256:{HEX}",
         None),
        ("[::1]:5000", "app", "v1", "[::1]:5000", None, "app", "v1",
         "[::1]:5000/app:v1"),
        # Named by the tag, fetched and verified by the digest.
        ("localhost:5000", "app", f"v1@sha256:{HEX}", "localhost:5000", None,
         "app", f"sha256:{HEX}", "localhost:5000/app:v1"),
    ])
def test_parse(registry, image, tag, host, scheme, repository, reference,
               repo_tag):
    ref = ImageReference.parse(registry, image, tag)
    assert ref.registry.host == host
    assert ref.registry.scheme == scheme
    assert ref.repository == repository
    assert ref.reference == reference
    assert ref.repo_tag == repo_tag


@pytest.mark.parametrize("registry, image, tag, complaint", [
    ("registry-1.docker.io", "Library/Busybox", "latest", "invalid image"),
    ("registry-1.docker.io", "busybox:latest", "latest", "own argument"),
    ("registry-1.docker.io", "busy box", "latest", "invalid image"),
    ("registry-1.docker.io", "a//b", "latest", "invalid image"),
    ("registry-1.docker.io", "busybox", "-bad", "invalid tag"),
    ("registry-1.docker.io", "busybox", "x" * 129, "invalid tag"),
    ("registry-1.docker.io", "busybox", "sha256:abc", "64 hex digits"),
    ("registry-1.docker.io", "busybox", "md5:" + "a" * 32, "unsupported"),
    ("registry-1.docker.io", "busybox", "sha256:" + "G" * 64,
     "invalid digest"),
    ("registry-1.docker.io", "busybox", f"@sha256:{HEX}", "invalid tag"),
    ("registry-1.docker.io", "busybox", "v1@", "64 hex digits"),
    ("registry-1.docker.io", "busybox", "v1@sha256:abc", "64 hex digits"),
    ("registry-1.docker.io", "busybox", f"v1@sha256:{HEX}@x", "invalid digest"),
    ("not a host", "busybox", "latest", "invalid registry"),
    ("ftp://x", "busybox", "latest", "invalid registry"),
    ("", "busybox", "latest", "invalid registry"),
])
def test_rejects(registry, image, tag, complaint):
    with pytest.raises(InvalidReference, match=complaint):
        ImageReference.parse(registry, image, tag)


@pytest.mark.parametrize("host, local", [
    ("localhost:5000", True), ("127.0.0.1", True), ("127.1.2.3:80", True),
    ("[::1]:5000", True), ("foo.localhost", True), ("quay.io", False),
    ("10.0.0.1:5000", False), ("localhost.example.com", False),
])
def test_loopback_registries_may_use_plain_http(host, local):
    assert Registry.parse(host).is_local is local


def test_digest_round_trip():
    digest = Digest.parse(f"sha256:{HEX}")
    assert str(digest) == f"sha256:{HEX}"
    assert Digest.of(b"") == Digest.parse(
        "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")


@pytest.mark.parametrize("text, host, repository, tag, digest, repo_tag, full_name", [
    ("busybox", "registry-1.docker.io", "library/busybox", "latest", None,
     "busybox:latest", "docker.io/library/busybox:latest"),
    ("busybox:1.36", "registry-1.docker.io", "library/busybox", "1.36", None,
     "busybox:1.36", "docker.io/library/busybox:1.36"),
    ("docker.io/team/app:2", "registry-1.docker.io", "team/app", "2", None,
     "team/app:2", "docker.io/team/app:2"),
    ("team/app", "registry-1.docker.io", "team/app", "latest", None,
     "team/app:latest", "docker.io/team/app:latest"),
    ("quay.io/org/app:1.0", "quay.io", "org/app", "1.0", None,
     "quay.io/org/app:1.0", "quay.io/org/app:1.0"),
    ("127.0.0.1:5000/team/app:2", "127.0.0.1:5000", "team/app", "2", None,
     "127.0.0.1:5000/team/app:2", "127.0.0.1:5000/team/app:2"),
    ("localhost/app", "localhost", "app", "latest", None,
     "localhost/app:latest", "localhost/app:latest"),
    (f"app@sha256:{HEX}", "registry-1.docker.io", "library/app", None,
     f"sha256:{HEX}", None, f"docker.io/library/app@sha256:{HEX}"),
    (f"host:5000/app:1.0@sha256:{HEX}", "host:5000", "app", "1.0",
     f"sha256:{HEX}", "host:5000/app:1.0", "host:5000/app:1.0"),
])
def test_parse_name(text, host, repository, tag, digest, repo_tag, full_name):
    ref = ImageReference.parse_name(text)
    assert (ref.registry.host, ref.repository, ref.tag) == (host, repository, tag)
    assert (str(ref.digest) if ref.digest else None) == digest
    assert ref.repo_tag == repo_tag
    assert ref.full_name == full_name
    assert ref.reference == (digest or tag)


@pytest.mark.parametrize("text", [
    "", "Busybox", "busybox:", "busybox:-x", "app@sha256:abc", "host:5000/",
    "quay.io/org/App:1", "app@", ":tag",
])
def test_parse_name_rejects(text):
    with pytest.raises(InvalidReference, match="invalid image reference"):
        ImageReference.parse_name(text)


# A final newline: '$' would let each of these through, and the tag would
# become part of a file name in a shared directory.
@pytest.mark.parametrize("registry, image, tag, complaint", [
    ("registry-1.docker.io", "busybox", "latest\n", "invalid tag"),
    ("registry-1.docker.io", "busybox\n", "latest", "invalid image"),
    ("quay.io\n", "busybox", "latest", "invalid registry"),
    ("registry-1.docker.io", "busybox", f"sha256:{HEX}\n", "invalid digest"),
    ("host:99999", "app", "v1", "port 99999 is not between 1 and 65535"),
    ("host:65536", "app", "v1", "port 65536 is not between 1 and 65535"),
    ("host:0", "app", "v1", "port 0 is not between 1 and 65535"),
    ("[:::::]", "app", "v1", r"\[:::::\] is not an IPv6 address"),
    ("a" * 300 + ".example.com", "app", "v1", "invalid registry"),
    ("a" * 64 + ".example.com", "app", "v1", "invalid registry"),
    (".".join(["a" * 60] * 5), "app", "v1", "at most 253 characters"),
])
def test_rejects_what_a_loose_pattern_let_through(registry, image, tag,
                                                  complaint):
    with pytest.raises(InvalidReference, match=complaint):
        ImageReference.parse(registry, image, tag)


@pytest.mark.parametrize("host", [
    "host:1", "host:65535", "[::1]", "[2001:db8::1]:443", "a" * 63 + ".io",
    ".".join(["a" * 60] * 4),
])
def test_accepts_the_edges(host):
    assert Registry.parse(host).host == host.lower()


@pytest.mark.parametrize("registry", [
    "http://user:s3cret@host:5000", "https://s3cret@host", "user:s3cret@host",
])
def test_a_password_in_the_registry_is_never_repeated(registry):
    with pytest.raises(InvalidReference) as caught:
        Registry.parse(registry)
    message = str(caught.value)
    assert "s3cret" not in message
    assert "***@host" in message and "--password-stdin" in message

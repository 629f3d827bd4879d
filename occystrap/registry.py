"""The pull side of the distribution API: manifests, tags and blobs."""

import dataclasses
import json
import logging
import time
from typing import Iterator

import requests

from occystrap.auth import scope
from occystrap.credentials import CredentialSource, Credentials
from occystrap.digest import Digest, Hasher, verify
from occystrap.errors import (
    InvalidReference, NotFound, RegistryError, RegistryUnreachable,
    VerificationError)
from occystrap.manifest import (
    ACCEPT, MAX_CONFIG_SIZE, MAX_MANIFEST_SIZE, Descriptor)
from occystrap.options import TransportOptions
from occystrap.reference import Registry
from occystrap.transport import (
    BODY_ERRORS, CHUNK_SIZE, TRANSIENT, Transport, arriving, error_codes,
    expect_ok, log_rate_limit, past, read_capped, reason, redact,
    timeout_hint)

LOG = logging.getLogger(__name__)

# Seconds a size hint may wait for an answer: it only saves time.
HINT_TIMEOUT = 5.0


@dataclasses.dataclass(frozen=True)
class FetchedManifest:
    data: bytes
    content_type: str
    digest: Digest


class RegistryClient:
    """Pulls from one registry."""

    def __init__(self, registry: Registry,
                 options: TransportOptions = TransportOptions(),
                 credentials: Credentials | CredentialSource | None = None,
                 transport: Transport | None = None) -> None:
        self.registry = registry
        self.transport = transport or Transport(registry, options,
                                                credentials)
        self.options = self.transport.options

    def close(self) -> None:
        self.transport.close()

    def __enter__(self) -> "RegistryClient":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _request(self, method: str, path: str, repository: str,
                 headers: dict | None = None, stream: bool = False,
                 deadline: float | None = None,
                 timeout: tuple[float, float] | None = None
                 ) -> requests.Response:
        return self.transport.request(
            method, path, scope(repository), repository, headers=headers,
            stream=stream, deadline=deadline, timeout=timeout)

    def _pause(self, attempt: int, retry_after: float | None, why: str,
               deadline: float | None = None) -> None:
        self.transport.pause(attempt, retry_after, why, deadline)

    def get_manifest(self, repository: str, reference: str,
                     expected: Digest | None = None) -> FetchedManifest:
        what = f"manifest {reference} of {repository}"
        failures = 0
        while True:
            response = self._request(
                "GET", f"{repository}/manifests/{reference}", repository,
                headers={"Accept": ACCEPT}, stream=True)
            with response:
                log_rate_limit(response)
                if response.status_code == 404:
                    raise self._manifest_not_found(repository, reference,
                                                   response)
                expect_ok(response, what)
                try:
                    data = read_capped(response, MAX_MANIFEST_SIZE, what)
                except TRANSIENT as e:
                    # Headers arrived but the body broke off: _send's
                    # retries are over, so retry the whole request here.
                    failures += 1
                    if failures > self.options.retries:
                        raise RegistryUnreachable(
                            f"download of {what} kept failing after "
                            f"{failures} attempts ({reason(e)})"
                            f"{timeout_hint(e)}") from e
                    self._pause(failures, None, "interrupted download")
                    continue
                content_type = response.headers.get("Content-Type", "")
                claimed = response.headers.get("Docker-Content-Digest")
            break
        algorithm = expected.algorithm if expected else "sha256"
        digest = Digest.of(data, algorithm)
        if expected is not None:
            verify(f"manifest {repository}@{expected}", expected, digest)
        elif claimed and claimed.startswith(f"{algorithm}:") \
                and claimed != str(digest):
            raise VerificationError(
                f"manifest {repository}:{reference} does not match the "
                f"digest the registry claims ({claimed}, content hashes to "
                f"{digest}); refusing it")
        return FetchedManifest(data, content_type, digest)

    def head_manifest(self, repository: str, reference: str) -> Digest | None:
        """The digest a tag points at now, if the registry says; None when
        it is not there. A HEAD does not count against Docker Hub's limit.
        """
        response = self._request(
            "HEAD", f"{repository}/manifests/{reference}", repository,
            headers={"Accept": ACCEPT})
        with response:
            log_rate_limit(response)
            if response.status_code == 404:
                return None
            expect_ok(response, f"manifest {reference} of {repository}")
            claimed = response.headers.get("Docker-Content-Digest", "")
        try:
            return Digest.parse(claimed)
        except InvalidReference:
            return None

    def _manifest_not_found(self, repository: str, reference: str,
                            response: requests.Response) -> NotFound:
        url = response.url
        codes = error_codes(response)
        if "NAME_UNKNOWN" in codes:
            return NotFound(
                f"repository {repository} not found on "
                f"{self.registry.host}; check the image name", 404, url)
        if ":" in reference:
            return NotFound(
                f"manifest {reference} not found in {repository} on "
                f"{self.registry.host}", 404, url)
        try:
            tags = self.list_tags(repository)
        except NotFound:
            return NotFound(
                f"repository {repository} not found on "
                f"{self.registry.host}; check the image name", 404, url)
        except (RegistryError, RegistryUnreachable):
            tags = None
        if tags is None:
            hint = "check the image name and tag"
        elif not tags:
            hint = "the repository has no tags"
        else:
            shown = ", ".join(tags[:10]) + (", …" if len(tags) > 10 else "")
            hint = f"available tags: {shown}"
        return NotFound(f"tag {reference!r} not found in {repository}; "
                        f"{hint}", 404, url)

    def list_tags(self, repository: str, limit: int = 100) -> list[str]:
        response = self._request(
            "GET", f"{repository}/tags/list?n={limit}", repository,
            stream=True)
        with response:
            if response.status_code == 404:
                raise NotFound(f"repository {repository} not found", 404,
                               response.url)
            expect_ok(response, f"tag list of {repository}")
            try:
                tags = json.loads(read_capped(response, MAX_MANIFEST_SIZE,
                                              "tag list")).get("tags")
            except (ValueError, AttributeError):
                return []
            except TRANSIENT as e:
                raise RegistryUnreachable(
                    f"the tag list of {repository} broke off: "
                    f"{reason(e)}") from None
        return sorted(t for t in tags or [] if isinstance(t, str))

    def blob_range(self, repository: str, descriptor: Descriptor,
                   start: int, length: int) -> bytes | None:
        """A few bytes from inside a blob, or None if the server won't say.

        Only for hints (a gzip trailer's size); nothing relies on them, so
        this is one short try: no retries, a short timeout. Raises
        RegistryUnreachable when the registry did not answer in time.
        """
        short = min(self.options.connect_timeout, HINT_TIMEOUT)
        response = self._request(
            "GET", f"{repository}/blobs/{descriptor.digest}", repository,
            headers={"Range": f"bytes={start}-{start + length - 1}",
                     "Accept-Encoding": "identity"}, stream=True,
            # A deadline already reached: the first try is the only one.
            deadline=time.monotonic(),
            timeout=(short, min(self.options.read_timeout, HINT_TIMEOUT)))
        with response:
            if response.status_code != 206:
                return None
            try:
                data = response.raw.read(length + 1)
            except BODY_ERRORS as e:
                raise RegistryUnreachable(
                    f"range probe of {descriptor.digest.short()} failed: "
                    f"{reason(e)}") from None
        return data if len(data) == length else None

    def fetch_blob(self, repository: str, descriptor: Descriptor,
                   cap: int = MAX_CONFIG_SIZE) -> bytes:
        """A small blob (a config), whole and verified."""
        if descriptor.size > cap:
            raise VerificationError(
                f"blob {descriptor.digest} claims {descriptor.size} bytes, "
                f"more than the {cap} allowed for it; refusing it")
        return b"".join(self.blob_chunks(repository, descriptor))

    def blob_chunks(self, repository: str, descriptor: Descriptor,
                    have: Hasher | None = None,
                    silent_since: float | None = None) -> Iterator[bytes]:
        """Stream a blob, resuming after breaks, verifying size and digest.

        `have` holds the blob's first bytes, already hashed (a partial
        download kept on disk): only the rest is requested and yielded.
        `silent_since` (monotonic) is when an earlier request for this blob
        (a size hint) went unanswered: the no-progress budget started then.
        The final digest check happens before the iterator finishes, so a
        consumer that commits only after exhausting it never commits bad data.
        """
        hasher = have or descriptor.digest.hasher()
        if hasher.size > descriptor.size:
            raise VerificationError(
                f"blob {descriptor.digest.short()} of {repository}: "
                f"{hasher.size} bytes kept, more than its {descriptor.size}")
        if hasher.size == descriptor.size:
            verify(f"blob {descriptor.digest.short()} of {repository}",
                   descriptor.digest, hasher.digest())
            return
        failures = 0
        # Where the last failure left us: a link that drops now and then
        # but makes real progress in between may keep resuming a big blob.
        reached = 0
        path = f"{repository}/blobs/{descriptor.digest}"
        what = f"blob {descriptor.digest.short()} of {repository}"
        # Moves on with every byte: only time without progress counts.
        deadline = (time.monotonic() if silent_since is None
                    else silent_since) + self.options.give_up_after
        while True:
            offset = hasher.size
            headers = {"Accept-Encoding": "identity"}
            if offset:
                headers["Range"] = f"bytes={offset}-"
            response = self._request("GET", path, repository,
                                     headers=headers, stream=True,
                                     deadline=deadline)
            try:
                if response.status_code == 404:
                    raise NotFound(
                        f"{what} not found on {self.registry.host}; the "
                        "image is incomplete on the registry", 404,
                        response.url)
                skip = self._resume_point(response, offset, descriptor, what)
                for chunk in arriving(response):
                    if skip:
                        dropped = min(skip, len(chunk))
                        chunk, skip = chunk[dropped:], skip - dropped
                        if not chunk:
                            continue
                    if hasher.size + len(chunk) > descriptor.size:
                        raise VerificationError(
                            f"{what} is longer than the {descriptor.size} "
                            "bytes its descriptor promises; refusing it")
                    hasher.update(chunk)
                    deadline = time.monotonic() + self.options.give_up_after
                    yield chunk
            except TRANSIENT as e:
                failures = _failures_after(failures, reached, hasher.size)
                reached = hasher.size
                if failures > self.options.retries or past(deadline):
                    raise RegistryUnreachable(
                        f"download of {what} kept failing after "
                        f"{failures} attempts ({reason(e)}); try again, "
                        "perhaps with a longer --timeout") from e
                LOG.info("%s interrupted at byte %d: %s; resuming", what,
                         hasher.size, reason(e))
                self._pause(failures, None, "interrupted download", deadline)
                continue
            finally:
                response.close()
            if hasher.size < descriptor.size:
                failures = _failures_after(failures, reached, hasher.size)
                reached = hasher.size
                if failures > self.options.retries:
                    raise VerificationError(
                        f"{what} ended after {hasher.size} of "
                        f"{descriptor.size} bytes, {failures} times")
                LOG.info("%s ended early at byte %d; resuming", what,
                         hasher.size)
                self._pause(failures, None, "truncated download")
                continue
            verify(what, descriptor.digest, hasher.digest())
            return

    def _resume_point(self, response: requests.Response, offset: int,
                      descriptor: Descriptor, what: str) -> int:
        """How many leading bytes of this response we already have."""
        status = response.status_code
        if status == 200:
            if offset:
                LOG.info("%s: server ignored the range request; "
                         "restarting from the beginning", what)
            return offset
        if status == 206 and offset:
            expected = f"bytes {offset}-{descriptor.size - 1}/"
            content_range = response.headers.get("Content-Range", "")
            if not content_range.startswith(expected):
                raise RegistryError(
                    f"{what}: resumed download has Content-Range "
                    f"{content_range!r}, expected {expected}…; refusing it",
                    206, redact(response.url))
            return 0
        expect_ok(response, what)
        raise RegistryError(
            f"{what}: unexpected HTTP {status}", status,
            redact(response.url))


def _failures_after(failures: int, reached: int, now: int) -> int:
    """Count a failure; progress of a chunk or more since the last forgives."""
    return 1 if now - reached >= CHUNK_SIZE else failures + 1

"""The push side of the distribution API: blobs and manifests up.

As the OCI distribution spec describes a push: a blob the registry has is
skipped after a HEAD; one it holds in another repository is mounted; a
small one goes up in one POST and PUT; a large one in PATCH chunks, then a
PUT naming its digest. The source is read again from any offset
(`reopen`), so nothing larger than one source chunk is held in memory
and an upload cut mid-chunk resumes from the offset the registry reports
rather than from the start. A blob whose digest is known only once it is
made (a layer compressed as it is sent) streams in PATCHes of unknown
length, as docker pushes, and is made again to resume (stream_blob).
Manifests go up last; the digest the registry computes must be ours.

    uploader = BlobUploader(transport, chunk_size=16 << 20)
    if not uploader.has_blob("team/app", digest):
        uploader.upload_blob("team/app", descriptor, reopen)
    uploader.put_manifest("team/app", "1.0", manifest, media_type)
"""

import contextlib
import logging
import urllib.parse
from typing import (
    Callable, ContextManager, Generator, Iterable, Iterator, Union, cast)

import requests

from occystrap.auth import scope
from occystrap.digest import Digest, Hasher
from occystrap.errors import (
    AccessDenied, BodyNotReplayable, RegistryError, RegistryUnreachable,
    UploadRefused, VerificationError)
from occystrap.manifest import Descriptor
from occystrap.transport import Body, Transport, error_details, redact

LOG = logging.getLogger(__name__)

# Each PATCH carries one chunk, streamed from the source, so memory does
# not grow with the chunk size; with a Content-Length when the blob's size
# is known (a blob made on the way has none: see stream_blob). 16 MiB: over
# ECR's 5 MiB minimum part; one round trip per chunk costs under 3% at
# 100 Mbit/s; distribution syncs its state to disk several times a PATCH
# (467 fsyncs for 514 MiB in 8 MiB chunks, 227 in 32 MiB ones), which 16
# MiB halves from 8 MiB; and a cut chunk costs at most 16 MiB again where
# a registry keeps no part of it (distribution keeps what arrived).
# Proxies with smaller body limits answer 413, and the message says to
# choose a smaller chunk size.
DEFAULT_CHUNK_SIZE = 16 << 20
MIN_CHUNK_SIZE = 64 << 10
# A blob up to this size (and the chunk size) goes up in one POST and PUT,
# held in memory to be checked before it is sent: one round trip fewer, at
# a bounded cost in memory per upload thread.
MONOLITHIC_MAX = 8 << 20
# Quota exhaustion has no standard code; these words in an error code or
# message mark it (Harbor, GitLab, Artifactory, Nexus say it so).
_QUOTA_WORDS = ("quota", "storage limit", "no space", "out of space",
                "insufficient storage", "disk full")

# Answers to a chunk after which asking where the upload stands may help;
# others (405, 413, 501, 507...) will not change on a retry.
_TRY_AGAIN = {408, 416, 429, 500, 502, 503, 504}

Reopen = Callable[[int], Iterable[bytes]]
# What a made blob comes in: bytes, or buffers as they were built.
Chunk = Union[bytes, bytearray]


class BlobUploader:
    """Pushes blobs and manifests to one registry; safe across threads."""

    def __init__(self, transport: Transport,
                 chunk_size: int = DEFAULT_CHUNK_SIZE) -> None:
        if chunk_size < MIN_CHUNK_SIZE:
            raise ValueError(f"chunk size {chunk_size} is under "
                             f"{MIN_CHUNK_SIZE} bytes")
        self.transport = transport
        self.chunk_size = chunk_size

    @property
    def host(self) -> str:
        return self.transport.registry.host

    # -- the interface -------------------------------------------------------

    def has_blob(self, repository: str, digest: Digest) -> bool:
        """Whether `repository` already holds the blob (a HEAD)."""
        response = self._request("HEAD", f"{repository}/blobs/{digest}",
                                 repository)
        with response:
            if response.status_code == 200:
                return True
            if response.status_code == 404:
                return False
            raise self._refused(response, repository, f"check for {digest}")

    def mount_blob(self, repository: str, digest: Digest,
                   source_repository: str) -> bool:
        """Mount a blob held in `source_repository` into `repository`.

        True if mounted (201). False if the registry started an upload
        instead (202: it cannot mount, or does not have the blob there;
        the session is cancelled) or may not let us read the source.
        """
        query = urllib.parse.urlencode({"mount": str(digest),
                                        "from": source_repository})
        try:
            response = self._request(
                "POST", f"{repository}/blobs/uploads/?{query}", repository,
                source=source_repository, body=b"")
        except AccessDenied as e:
            # Usually pull refused on the source: upload the bytes instead.
            # A refusal to push here will come back on that upload.
            LOG.info("mounting %s from %s refused: %s", digest.short(),
                     source_repository, e)
            return False
        with response:
            if response.status_code == 201:
                self._check_digest(response, repository, digest)
                return True
            if response.status_code == 202:
                LOG.debug("%s did not mount %s from %s; cancelling the upload "
                          "it started", self.host, digest.short(),
                          source_repository)
                self._cancel(repository, self._location(response, repository))
                return False
            if response.status_code == 404:
                return False  # some registries: the source has no such blob
            raise self._refused(response, repository, f"mount {digest}")

    def upload_blob(self, repository: str, descriptor: Descriptor,
                    reopen: Reopen,
                    report: Callable[[int], None] = lambda n: None,
                    prehashed: bool = False) -> None:
        """Upload one blob, whose bytes from `offset` are `reopen(offset)`.

        `report(n)` is told how many bytes the registry holds so far. Blobs
        up to the chunk size (and MONOLITHIC_MAX) go in one POST and PUT;
        larger ones in PATCH chunks. A cut chunk resumes where the registry
        says the upload stands; a session the registry forgot starts again.
        The bytes must hash to the descriptor's digest: nothing else is
        committed.

        `prehashed`: reopen(0)'s stream was or is hashed by its maker (a
        source that checks its digest when read to its end, a file hashed
        as it was written), so a large blob is not hashed here again. After
        a resume, the registry's check on the closing PUT is then the only
        one, as the spec requires every registry to make.
        """
        _Upload(self, repository, descriptor, reopen, report,
                prehashed).run()

    def stream_blob(self, repository: str, media_type: str,
                    produce: Callable[[], Iterable[Chunk]],
                    turn: Callable[[], ContextManager] = contextlib.nullcontext
                    ) -> Descriptor:
        """Upload a blob made as it is sent; its descriptor once it is up.

        `produce()` makes the blob's bytes from their start, the same bytes
        every time it is called: an upload cut off is resumed by making
        them again and skipping what the registry says it holds. They go
        up in PATCHes of up to the chunk size whose length is known only at
        their end (a streamed upload, as docker pushes), hashed on the way,
        and the closing PUT names the digest they hashed to. Each PATCH's
        body is made and sent within `turn()`, left before the registry's
        answer is awaited.
        """
        upload = _Streamed(self, repository, media_type, produce, turn)
        upload.run()
        return upload.descriptor

    def put_manifest(self, repository: str, reference: str, data: bytes,
                     media_type: str) -> Digest:
        """Put a manifest (or index) under a tag or digest; return its digest.

        The registry's Docker-Content-Digest, when sent, must be ours: a
        registry that rewrote the manifest would break digest references.
        """
        ours = Digest.of(data)
        response = self._request(
            "PUT", f"{repository}/manifests/{reference}", repository,
            headers={"Content-Type": media_type}, body=data)
        with response:
            if response.status_code not in (200, 201, 202):
                raise self._refused(response, repository,
                                    f"store the manifest {reference}")
            self._check_digest(response, repository, ours, "manifest")
        return ours

    # -- requests and their refusals ----------------------------------------

    def _request(self, method: str, path: str, repository: str, *,
                 source: str | None = None, headers: dict | None = None,
                 body: Body = None
                 ) -> requests.Response:
        wanted = scope(repository, "pull,push",
                       *([(source, "pull")] if source else []))
        try:
            return self.transport.request(method, path, wanted, repository,
                                          "push", headers=headers, body=body)
        except AccessDenied as e:
            if _quota(e.codes, e.messages):
                raise self._full(repository, e.status, e.codes, e.messages,
                                 e.url) from None
            raise

    def _check_digest(self, response: requests.Response, repository: str,
                      ours: Digest, what: str = "blob") -> None:
        claimed = response.headers.get("Docker-Content-Digest")
        if claimed and claimed != str(ours):
            raise VerificationError(
                f"{self.host} stored the {what} {ours} in {repository} as "
                f"{claimed}; the registry changed it, so references by "
                "digest would break; push to another registry")

    def _cancel(self, repository: str, location: str) -> None:
        """Give back an upload session; a failure here only wastes space."""
        try:
            self._request("DELETE", location, repository).close()
        except (RegistryError, RegistryUnreachable) as e:
            LOG.debug("could not cancel an upload to %s: %s", repository, e)

    def _location(self, response: requests.Response, repository: str,
                  default: str | None = None) -> str:
        location = response.headers.get("Location") or default
        if not location:
            raise RegistryError(
                f"{self.host} started an upload to {repository} without "
                "saying where to send it (no Location); it is not a "
                "registry occystrap can push to", response.status_code,
                redact(response.url))
        # Relative locations are relative to the request's URL.
        return urllib.parse.urljoin(response.url, location)

    def _full(self, repository: str, status: int | None, codes: list[str],
              messages: list[str], url: str | None) -> UploadRefused:
        said = f": {messages[0][:200]}" if messages else ""
        return UploadRefused(
            f"{self.host} has no room for {repository} (HTTP {status}{said})"
            "; it is out of space or over quota: free space or raise the "
            "quota, then push again", status, url)

    def _refused(self, response: requests.Response, repository: str,
                 doing: str) -> RegistryError:
        """The one-line error for a push the registry will not take."""
        status = response.status_code
        codes, messages = error_details(response)
        url = redact(response.url)
        if status == 405 or "UNSUPPORTED" in codes:
            return UploadRefused(
                f"{self.host} does not accept pushes to {repository} (HTTP "
                f"{status}): it is read-only or a pull-through cache; push to "
                "a registry that takes uploads", status, url)
        if status == 413:
            return UploadRefused(
                f"{self.host} refused a request to push to {repository} as "
                f"too large (HTTP 413); use a smaller --chunk-size than "
                f"{self.chunk_size >> 10} KiB", status, url)
        if status == 411:
            return UploadRefused(
                f"{self.host} refused an upload to {repository} sent without "
                "its length in advance (HTTP 411), which a layer compressed "
                "on the way needs; push a bundle instead (fetch-to-bundle "
                "keeps the registry's compressed layers)", status, url)
        if status == 507 or _quota(codes, messages):
            return self._full(repository, status, codes, messages, url)
        if status == 404 and "NAME_UNKNOWN" in codes:
            return UploadRefused(
                f"{self.host} has no repository {repository} and does not "
                "create one on push; create it there first", status, url)
        if status == 429 or status >= 500:
            return RegistryError(
                f"{self.host} kept failing to {doing} in {repository} (HTTP "
                f"{status}); try again later", status, url)
        said = f": {messages[0][:200]}" if messages else ""
        detail = f" ({', '.join(codes)}{said})" if codes else ""
        error = RegistryError(
            f"{self.host} refused to {doing} in {repository}: HTTP "
            f"{status}{detail}", status, url)
        error.codes, error.messages = codes, messages
        return error


class _Gone(Exception):
    """The registry forgot the upload session: start again."""


class _Broken(Exception):
    """A chunk did not go through whole: ask where the upload stands."""

    def __init__(self, why: str, retry_after: float | None = None) -> None:
        super().__init__(why)
        self.retry_after = retry_after


class _Upload:
    """One blob's upload: its session, offset and failures."""

    def __init__(self, uploader: BlobUploader, repository: str,
                 descriptor: Descriptor, reopen: Reopen,
                 report: Callable[[int], None], prehashed: bool) -> None:
        self.up = uploader
        self.repository = repository
        self.descriptor = descriptor
        self.reopen = reopen
        self.report = report
        self.hashed = _Ledger(off=prehashed)
        self.location = ""
        # Failures in a row without the registry taking a byte more.
        self.failures = 0

    @property
    def retries(self) -> int:
        return self.up.transport.options.retries

    def run(self) -> None:
        while True:
            try:
                self._once()
                return
            except _Gone as e:
                self._failed(f"{e}; starting the upload again")

    def _once(self) -> None:
        """The whole upload, in one session; _Gone if the registry forgot it."""
        if self.descriptor.size <= min(self.up.chunk_size, MONOLITHIC_MAX):
            self._monolithic()
        else:
            self._chunked()

    def _label(self) -> str:
        return self.descriptor.digest.short()

    def _failed(self, why: str, retry_after: float | None = None) -> None:
        self.failures += 1
        if self.failures > self.retries:
            raise RegistryUnreachable(
                f"uploading {self._label()} to "
                f"{self.repository} on {self.up.host} failed "
                f"{self.failures} times in a row ({why}); check the network "
                "and try again, perhaps with a smaller --chunk-size")
        if retry_after is not None:
            retry_after = min(retry_after,
                              self.up.transport.options.max_retry_after)
        self.up.transport.pause(self.failures, retry_after, why)

    def _start(self) -> str:
        response = self.up._request(
            "POST", f"{self.repository}/blobs/uploads/", self.repository,
            body=b"")
        with response:
            if response.status_code != 202:
                raise self.up._refused(response, self.repository,
                                       "start an upload")
            return self.up._location(response, self.repository)

    def _monolithic(self) -> None:
        """POST for a session, then one PUT with every byte and the digest."""
        # One more byte than promised shows a source that is too long.
        data = b"".join(_pieces(self.reopen(0), self.up.chunk_size,
                                self.descriptor.size + 1))
        digest = Digest.of(data, self.descriptor.digest.algorithm)
        self._verify(digest, len(data))
        location = self._start()
        self._finish(location, data)
        self.report(len(data))

    def _chunked(self) -> None:
        self.location = self._start()
        try:
            offset = self._send_chunks()
            self._verify(self.hashed.digest(self.descriptor), offset)
            self._finish(self.location, b"")
        except VerificationError:
            # Bad bytes are never committed; the session is given back.
            self.up._cancel(self.repository, self.location)
            raise

    def _send_chunks(self) -> int:
        """PATCH every byte, resuming after breaks; the bytes sent."""
        offset = 0
        size = self.descriptor.size
        while offset < size:
            try:
                source = _Stream(self.reopen(offset))
                while offset < size:
                    length = min(self.up.chunk_size, size - offset)
                    piece = _Piece(source, offset, length, self.hashed,
                                   self.descriptor)
                    self.location = self._patch(
                        self.location, piece,
                        {"Content-Range": f"{offset}-{offset + length - 1}"})
                    offset += length
                    self.failures = 0
                    self.report(offset)
                # Past the promised size, the source must end: reading on
                # also lets a source that checks its digest at its end
                # (a bundle's blob) do so before the closing PUT.
                if not source.ended():
                    raise VerificationError(
                        f"blob {self.descriptor.digest} is longer than the "
                        f"{size} bytes its descriptor says; the source is "
                        "damaged or changed, and nothing was pushed under "
                        "that digest")
            except _Broken as e:
                at = self._resume_point(e, offset,
                                        min(offset + self.up.chunk_size, size),
                                        f"{offset} and one chunk")
                offset = at
                self.report(offset)
        return offset

    def _resume_point(self, broken: _Broken, before: int, most: int,
                      sent: str) -> int:
        """After a break, where the registry says the upload stands; more
        than `most` bytes (what could have arrived) is an error. Retries
        count breaks without progress: past `before` (what the registry
        held when the cut chunk began), part of it arrived."""
        self._failed(str(broken), broken.retry_after)
        self.location, at = self._status(self.location)
        if at > before:
            self.failures = 0
        if at > most:
            raise RegistryError(
                f"{self.up.host} reports {at} bytes of an upload to "
                f"{self.repository} that was sent {sent}; refusing to "
                "guess: push again", None, redact(self.location)) from None
        LOG.info("upload of %s to %s broke off (%s); the registry holds %d "
                 "bytes, resuming from there", self._label(), self.repository,
                 broken, at)
        return at

    def _patch(self, location: str, piece: Iterable[Chunk | memoryview],
               headers: dict[str, str]) -> str:
        """Send one chunk; the upload's next location, or _Broken/_Gone.

        The body is streamed, so never sent twice by the transport (part
        of a cut chunk may have landed): views of the source's chunks,
        which sockets send as they are. With a length when it is known
        (the OCI spec's chunked upload), else in chunked encoding.
        """
        try:
            response = self.up._request(
                "PATCH", location, self.repository,
                body=cast("Iterable[bytes]", piece),
                headers={"Content-Type": "application/octet-stream",
                         **headers})
        except BodyNotReplayable as e:
            raise _Broken(str(e)) from None
        with response:
            if response.status_code == 202:
                return self.up._location(response, self.repository)
            if response.status_code == 404:
                raise _Gone(f"{self.up.host} forgot the upload session")
            if response.status_code in _TRY_AGAIN:
                raise _Broken(f"HTTP {response.status_code}",
                              _retry_after(response))
            raise self.up._refused(response, self.repository, "upload")

    def _status(self, location: str) -> tuple[str, int]:
        """Where an upload stands: its location and the bytes it holds."""
        try:
            response = self.up._request("GET", location, self.repository)
        except RegistryUnreachable as e:
            raise RegistryUnreachable(
                f"cannot ask {self.up.host} how much of an upload to "
                f"{self.repository} arrived ({e})") from None
        with response:
            if response.status_code == 404:
                # distribution answers 404 when the session holds other
                # bytes than the location recorded: it cannot resume it.
                raise _Gone(f"{self.up.host} cannot resume the upload")
            if response.status_code not in (200, 204):
                raise self.up._refused(response, self.repository,
                                       "resume an upload")
            return (self.up._location(response, self.repository, location),
                    _received(response.headers.get("Range")))

    def _finish(self, location: str, body: bytes) -> None:
        """The closing PUT, naming the digest; it commits the blob."""
        digest = self.descriptor.digest
        split = urllib.parse.urlsplit(location)
        query = urllib.parse.parse_qsl(split.query, keep_blank_values=True)
        query.append(("digest", str(digest)))
        url = urllib.parse.urlunsplit(
            split._replace(query=urllib.parse.urlencode(query)))
        response = self.up._request(
            "PUT", url, self.repository, body=body,
            headers={"Content-Type": "application/octet-stream"})
        with response:
            if response.status_code in (201, 204):
                self.up._check_digest(response, self.repository, digest)
                return
            if response.status_code == 404:
                # A PUT re-sent after its answer was lost finds the session
                # closed; the blob then is there.
                if self.up.has_blob(self.repository, digest):
                    return
                raise _Gone(f"{self.up.host} forgot the upload session")
            error = self.up._refused(response, self.repository,
                                     f"finish the upload of {digest}")
        if {"DIGEST_INVALID", "SIZE_INVALID"} & set(error.codes):
            raise VerificationError(
                f"{self.up.host} found the bytes of {digest} pushed to "
                f"{self.repository} do not match it ({', '.join(error.codes)}"
                "); the source is damaged or changed; nothing was stored")
        raise error

    def _verify(self, digest: Digest | None, size: int) -> None:
        expected = self.descriptor
        if size != expected.size or (digest is not None
                                     and digest != expected.digest):
            raise VerificationError(
                f"blob {expected.digest} read as {size} bytes hashing to "
                f"{digest or 'something else'}; the source is damaged or "
                "changed, and nothing was pushed under that digest")


class _Streamed(_Upload):
    """One blob's upload as it is made; see BlobUploader.stream_blob."""

    def __init__(self, uploader: BlobUploader, repository: str,
                 media_type: str, produce: Callable[[], Iterable[Chunk]],
                 turn: Callable[[], ContextManager]) -> None:
        super().__init__(uploader, repository, Descriptor(media_type, _NONE, 0),
                         lambda offset: iter(()), lambda n: None, True)
        self.media_type = media_type
        self.produce = produce
        self.turn = turn

    def _label(self) -> str:
        return "a blob made on the way"

    def _once(self) -> None:
        self.location = self._start()
        held = 0  # what the registry holds of the upload
        while True:
            hasher = Hasher()
            try:
                source = _Stream(_hashed(self.produce(), hasher))
                skip = held
                while skip:
                    taken = len(source.take(skip))
                    if not taken:
                        raise RegistryError(
                            f"{self.up.host} reports {held} bytes of an "
                            f"upload to {self.repository}, more than the "
                            f"blob has ({hasher.size}); refusing to guess: "
                            "push again", None, redact(self.location))
                    skip -= taken
                while not source.ended():
                    body = self._body(source)
                    try:
                        self.location = self._patch(self.location, body, {})
                    finally:
                        body.close()  # the turn is given back, sent or not
                    self.failures = 0
                    held = source.taken
                break
            except _Broken as e:
                held = self._resume_point(e, held, hasher.size,
                                          f"at most {hasher.size} bytes")
        self.descriptor = Descriptor(self.media_type, hasher.digest(),
                                     hasher.size)
        self._finish(self.location, b"")

    def _body(self, source: "_Stream") -> Generator[Chunk, None, None]:
        with self.turn():
            yield from _Open(source, self.up.chunk_size)


# A digest no blob has: a streamed upload's, until its bytes are all made.
_NONE = Digest("sha256", "0" * 64)


def _hashed(chunks: Iterable[Chunk], hasher: Hasher) -> Iterator[Chunk]:
    for chunk in chunks:
        hasher.update(chunk)
        yield chunk


class _Ledger:
    """Hashes a blob as it is first read, whatever resumes re-read.

    Resumes start at or before the furthest byte read so far; only bytes
    beyond it are hashed. If one ever started beyond (a registry claiming
    bytes we never read), the hash is abandoned and the registry's own
    check of the digest on the closing PUT is the only one.
    """

    def __init__(self, off: bool = False) -> None:
        self.hasher: Hasher | None = None
        self.upto = 0
        self.lost = off

    def feed(self, offset: int, piece: bytes | memoryview) -> None:
        if self.lost:
            return
        if offset > self.upto:
            self.lost = True
            return
        if self.hasher is None:
            self.hasher = Hasher()
        fresh = piece[self.upto - offset:]
        if fresh:
            self.hasher.update(fresh)
            self.upto += len(fresh)

    def digest(self, descriptor: Descriptor) -> Digest | None:
        if self.lost or self.hasher is None \
                or descriptor.digest.algorithm != "sha256":
            return None
        return self.hasher.digest()


def _pieces(chunks: Iterable[bytes], size: int, limit: int
            ) -> Iterator[bytes]:
    """Re-cut a stream into pieces of `size` bytes, up to `limit` in all."""
    buffer = bytearray()
    for chunk in chunks:
        buffer += chunk
        while limit > 0 and len(buffer) >= min(size, limit):
            piece = bytes(buffer[:min(size, limit)])
            del buffer[:len(piece)]
            limit -= len(piece)
            yield piece
        if limit <= 0:
            return
    if buffer:
        yield bytes(buffer)


class _Stream:
    """A source's chunks, handed out up to a number of bytes at a time.

    What is left of a chunk waits for the next PATCH as a view, so the
    bytes are never copied: an upload holds one source chunk, whatever the
    chunk size.
    """

    def __init__(self, chunks: Iterable[Chunk]) -> None:
        self._chunks = iter(chunks)
        self._left = memoryview(b"")
        # Bytes handed out so far.
        self.taken = 0

    def take(self, most: int) -> memoryview:
        """Up to `most` bytes; empty at the end of the source."""
        if self.ended():
            return self._left
        taken, self._left = self._left[:most], self._left[most:]
        self.taken += len(taken)
        return taken

    def ended(self) -> bool:
        """Whether every byte has been taken (reading on to know)."""
        while not self._left:
            chunk = next(self._chunks, None)
            if chunk is None:
                return True
            self._left = memoryview(chunk)
        return False


class _Piece:
    """One PATCH's body: the next `length` bytes of a stream, sent as they
    are read, hashed on the way by the upload's ledger."""

    def __init__(self, source: _Stream, offset: int, length: int,
                 ledger: "_Ledger", descriptor: Descriptor) -> None:
        self._source = source
        self._offset = offset
        self._length = length
        self._ledger = ledger
        self._descriptor = descriptor

    def __len__(self) -> int:
        return self._length

    def __iter__(self) -> Iterator[memoryview]:
        offset, end = self._offset, self._offset + self._length
        while offset < end:
            chunk = self._source.take(end - offset)
            if not chunk:
                raise VerificationError(
                    f"blob {self._descriptor.digest} ended after {offset} "
                    f"of {self._descriptor.size} bytes; the source is "
                    "damaged or changed, and nothing was pushed under that "
                    "digest")
            self._ledger.feed(offset, chunk)
            offset += len(chunk)
            yield chunk


class _Open:
    """One streamed PATCH's body: up to `most` bytes of a stream whose
    length is known only once it ends.

    Sent in chunked encoding, which frames each piece in a copy of it: a
    view would be copied to bytes first, so pieces go out as the objects
    they were made as, and only the one cut at the PATCH's end is copied.
    """

    def __init__(self, source: _Stream, most: int) -> None:
        self._source = source
        self._most = most

    def __iter__(self) -> Iterator[Chunk]:
        sent = 0
        while sent < self._most:
            view = self._source.take(self._most - sent)
            if not view:
                return
            sent += len(view)
            made = view.obj
            if isinstance(made, (bytes, bytearray)) and len(made) == len(view):
                yield made
            else:
                yield bytes(view)


def _received(header: str | None) -> int:
    """Bytes an upload holds, from its `Range: 0-<last>` header.

    distribution says "0-0" of an empty upload too; taking it as nothing
    re-sends at most one byte of a one-byte upload, which never happens.
    """
    if not header:
        return 0
    start, _, end = header.strip().removeprefix("bytes=").partition("-")
    if not (start.isdigit() and end.isdigit()) or int(end) == 0:
        return 0
    return int(end) + 1


def _retry_after(response: requests.Response) -> float | None:
    value = response.headers.get("Retry-After", "").strip()
    return float(value) if value.isdigit() else None


def _quota(codes: list[str], messages: list[str]) -> bool:
    text = " ".join(codes + messages).lower().replace("_", " ")
    return "507" in codes or any(word in text for word in _QUOTA_WORDS)

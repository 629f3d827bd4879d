"""All HTTP to a registry: transport policy, auth, manifests and blobs."""

import dataclasses
import email.utils
import json
import logging
import random
import time
import urllib.parse
from typing import Iterator

import requests
import urllib3

from occystrap import tls
from occystrap.auth import Authenticator
from occystrap.credentials import CredentialSource, Credentials
from occystrap.digest import Digest, Hasher, verify
from occystrap.errors import (
    AccessDenied, InvalidReference, NotFound, RateLimited, RegistryError, RegistryUnreachable,
    VerificationError)
from occystrap.humanize import human_duration
from occystrap.manifest import (
    ACCEPT, MAX_CONFIG_SIZE, MAX_MANIFEST_SIZE, Descriptor)
from occystrap.reference import Registry

LOG = logging.getLogger(__name__)

CHUNK_SIZE = 1 << 20
_RETRY_STATUSES = {408, 429, 500, 502, 503, 504}
_MAX_REDIRECTS = 5
# Errors worth retrying: the link or the server had a moment.
_TRANSIENT = (requests.ConnectionError, requests.Timeout,
              requests.exceptions.ChunkedEncodingError)
# What urllib3 raises when a body is read from it directly.
_BODY_ERRORS = (urllib3.exceptions.ProtocolError,
                urllib3.exceptions.ReadTimeoutError,
                urllib3.exceptions.SSLError)


@dataclasses.dataclass(frozen=True)
class TransportOptions:
    verify: bool | str = True
    connect_timeout: float = 15.0
    read_timeout: float = 30.0
    retries: int = 4
    backoff: float = 1.0
    max_backoff: float = 20.0
    max_retry_after: float = 60.0
    # Retries stop once a request or download has made no progress for this
    # long, so that retries nested in resumes cannot add up to hours.
    give_up_after: float = 90.0
    # docker's per-registry CA directory; None to ignore it.
    certs_d: str | None = str(tls.DEFAULT_CERTS_D)


@dataclasses.dataclass(frozen=True)
class FetchedManifest:
    data: bytes
    content_type: str
    digest: Digest


class RegistryClient:
    """Speaks the OCI distribution API to one registry."""

    def __init__(self, registry: Registry,
                 options: TransportOptions = TransportOptions(),
                 credentials: Credentials | CredentialSource | None = None
                 ) -> None:
        self.registry = registry
        self.options = options
        self.trust = tls.TrustStore(registry.host, options.verify,
                                    options.certs_d)
        self.session = requests.Session()
        self.session.headers["User-Agent"] = "occystrap"
        # A no-op auth stops requests adding ~/.netrc credentials, which
        # would replace our Authorization header and go to redirect hosts.
        self.session.auth = _no_auth
        self.auth = Authenticator(registry.host, credentials, self._send)
        self._base_url: str | None = None

    def close(self) -> None:
        self.session.close()
        self.trust.close()

    # -- transport ---------------------------------------------------------

    def _send(self, method: str, url: str, *, headers: dict | None = None,
              params: dict | None = None, data: dict | None = None,
              stream: bool = False,
              deadline: float | None = None) -> requests.Response:
        """One logical request: retries transient failures, follows redirects.

        Redirects are followed here, not by requests, so that credentials
        never travel to another host and https is never downgraded. No retry
        starts after `deadline` (monotonic; default: give_up_after from now).
        """
        headers = dict(headers or {})
        attempt = 0
        if deadline is None:
            deadline = time.monotonic() + self.options.give_up_after
        while True:
            try:
                response = self._follow(method, url, headers, params, data,
                                        stream)
            except requests.exceptions.SSLError as e:
                # The failing host may be a token realm or a blob redirect.
                where = urllib.parse.urlsplit(url).netloc
                if "CERTIFICATE_VERIFY_FAILED" in str(e):
                    certs_d = (f" or {self.options.certs_d}/{where}/ca.crt"
                               if self.options.certs_d else "")
                    raise RegistryUnreachable(
                        f"TLS verification failed for {where}: "
                        f"{_verify_reason(e)}; use --ca-cert FILE{certs_d} "
                        "for a private CA, or --insecure to skip "
                        "verification") from e
                raise RegistryUnreachable(
                    f"TLS handshake with {where} failed "
                    f"({_reason(e)}); if it speaks plain HTTP, give the "
                    f"registry as http://{self.registry.host}") from e
            except _TRANSIENT as e:
                if _is_dns_failure(e):
                    raise RegistryUnreachable(
                        f"cannot resolve registry host "
                        f"{urllib.parse.urlsplit(url).hostname}; check the "
                        "registry name and your DNS or proxy settings") from e
                attempt += 1
                if attempt > self.options.retries or _past(deadline):
                    raise RegistryUnreachable(
                        f"cannot reach {_redact(url)} after {attempt} "
                        f"attempts: {_reason(e)}{_timeout_hint(e)}") from e
                self._pause(attempt, None, f"{_reason(e)}", deadline)
                continue
            if response.status_code not in _RETRY_STATUSES:
                return response
            attempt += 1
            # After a redirect, the host that failed may not be the registry.
            answered = urllib.parse.urlsplit(response.url).netloc
            retry_after = _retry_after(response.headers.get("Retry-After"))
            if (retry_after is not None
                    and retry_after > self.options.max_retry_after):
                response.close()
                raise RateLimited(
                    f"{self.registry.host} asks to wait "
                    f"{human_duration(retry_after)} before retrying "
                    f"(HTTP {response.status_code}); try again later, or "
                    "authenticate (--username/--password) for a higher "
                    "pull limit", response.status_code, _redact(url))
            if attempt > self.options.retries \
                    or _past(deadline, retry_after or 0.0):
                response.close()
                hint = ("the registry is rate limiting; authenticate for a "
                        "higher limit or try later"
                        if response.status_code == 429
                        else "the registry is failing; try again later")
                raise RegistryError(
                    f"{answered} answered HTTP "
                    f"{response.status_code} to {attempt} attempts for "
                    f"{_redact(response.url)}; {hint}", response.status_code,
                    _redact(response.url))
            response.close()
            self._pause(attempt, retry_after, f"HTTP {response.status_code}",
                        deadline)

    def _follow(self, method: str, url: str, headers: dict,
                params: dict | None, data: dict | None,
                stream: bool) -> requests.Response:
        timeout = (self.options.connect_timeout, self.options.read_timeout)
        origin = urllib.parse.urlsplit(url)
        for _ in range(_MAX_REDIRECTS + 1):
            # verify given per request: a session's verify loses to
            # REQUESTS_CA_BUNDLE in requests' merge, even --insecure.
            response = self.session.request(
                method, url, headers=headers, params=params, data=data,
                stream=stream, timeout=timeout, allow_redirects=False,
                verify=self.trust.verify, proxies=tls.proxies_for(url))
            if response.status_code not in (301, 302, 303, 307, 308):
                return response
            location = response.headers.get("Location")
            response.close()
            if not location:
                raise RegistryError(
                    f"{self.registry.host} sent a redirect without a "
                    "Location", response.status_code, _redact(url))
            target = urllib.parse.urljoin(url, location)
            split = urllib.parse.urlsplit(target)
            if urllib.parse.urlsplit(url).scheme == "https" \
                    and split.scheme != "https":
                raise RegistryError(
                    f"{self.registry.host} redirected from https to "
                    f"{split.scheme}; refusing to downgrade",
                    response.status_code, _redact(target))
            if response.status_code in (301, 302, 303) and method == "POST":
                method, data = "GET", None  # as browsers and requests do
            if split.netloc != origin.netloc:
                # Signed blob URLs carry their own authority; our
                # credentials (header or token form) belong to the registry
                # and its realm alone.
                headers = {k: v for k, v in headers.items()
                           if k.lower() != "authorization"}
                data = None
            LOG.debug("redirected to %s", _redact(target))
            url, params = target, None
        raise RegistryError(f"too many redirects for {_redact(url)}",
                            None, _redact(url))

    def _pause(self, attempt: int, retry_after: float | None,
               why: str, deadline: float | None = None) -> None:
        if retry_after is not None:
            delay = retry_after
        else:
            delay = min(self.options.max_backoff,
                        self.options.backoff * 2 ** (attempt - 1))
            delay *= random.uniform(0.5, 1.0)
            if deadline is not None:
                # A last try just before giving up beats sleeping past it.
                delay = min(delay, max(0.0, deadline - time.monotonic()))
        LOG.info("retrying after %s (attempt %d of %d) in %.1fs", why,
                 attempt + 1, self.options.retries + 1, delay)
        time.sleep(delay)

    def base_url(self) -> str:
        """Find the API root, pinging /v2/ once to learn the auth scheme."""
        if self._base_url:
            return self._base_url
        registry = self.registry
        if registry.scheme:
            schemes = [registry.scheme]
        elif registry.is_local:
            schemes = ["https", "http"]
        else:
            schemes = ["https"]
        https_error: RegistryUnreachable | None = None
        for scheme in schemes:
            url = f"{scheme}://{registry.host}/v2/"
            try:
                response = self._send("GET", url)
            except RegistryUnreachable as e:
                if https_error:
                    raise https_error from None
                if scheme == schemes[-1]:
                    raise
                LOG.debug("%s unusable for %s; trying plain http", scheme,
                          registry.host)
                https_error = e
                continue
            response.close()
            if https_error and response.status_code not in (200, 401):
                # Not a registry over http either (a TLS port answers 400):
                # the https failure (say, an unknown CA) is the real story.
                raise https_error
            if response.status_code == 401:
                self.auth.remember(response.headers.get("WWW-Authenticate"))
            elif response.status_code == 404:
                raise RegistryError(
                    f"{registry.host} does not offer the registry API "
                    f"(GET {url} answered 404); check the registry name",
                    404, url)
            elif response.status_code >= 400:
                raise RegistryError(
                    f"{registry.host} answered HTTP {response.status_code} "
                    "to the API check", response.status_code, url)
            self._base_url = f"{scheme}://{registry.host}/v2"
            return self._base_url
        raise AssertionError("unreachable")

    def _request(self, method: str, path: str, repository: str,
                 headers: dict | None = None, stream: bool = False,
                 deadline: float | None = None) -> requests.Response:
        """A request to the API with authentication answered as needed."""
        url = f"{self.base_url()}/{path}"
        scope = f"repository:{repository}:pull"
        headers = dict(headers or {})
        for answered in (False, True):
            authorization = self.auth.header(scope)
            if authorization:
                headers["Authorization"] = authorization
            response = self._send(method, url, headers=headers, stream=stream,
                                  deadline=deadline)
            if response.status_code != 401 or answered:
                break
            response.close()
            # Once only: a token that expired mid-pull is renewed here.
            self.auth.answer(response.headers.get("WWW-Authenticate", ""),
                             scope, url, rejected=authorization)
        if response.status_code == 401:
            response.close()
            raise self.auth.refusal(
                response.headers.get("WWW-Authenticate", ""), repository, url)
        if response.status_code == 403:
            response.close()
            raise AccessDenied(
                f"access denied to {repository} on {self.registry.host}"
                + self.auth.as_user()
                + "; check the repository name and your permissions",
                403, url)
        return response

    # -- API -----------------------------------------------------------------

    def get_manifest(self, repository: str, reference: str,
                     expected: Digest | None = None) -> FetchedManifest:
        what = f"manifest {reference} of {repository}"
        failures = 0
        while True:
            response = self._request(
                "GET", f"{repository}/manifests/{reference}", repository,
                headers={"Accept": ACCEPT}, stream=True)
            with response:
                _log_rate_limit(response)
                if response.status_code == 404:
                    raise self._manifest_not_found(repository, reference,
                                                   response)
                _expect_ok(response, what)
                try:
                    data = _read_capped(response, MAX_MANIFEST_SIZE, what)
                except _TRANSIENT as e:
                    # Headers arrived but the body broke off: _send's
                    # retries are over, so retry the whole request here.
                    failures += 1
                    if failures > self.options.retries:
                        raise RegistryUnreachable(
                            f"download of {what} kept failing after "
                            f"{failures} attempts ({_reason(e)})"
                            f"{_timeout_hint(e)}") from e
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
            _log_rate_limit(response)
            if response.status_code == 404:
                return None
            _expect_ok(response, f"manifest {reference} of {repository}")
            claimed = response.headers.get("Docker-Content-Digest", "")
        try:
            return Digest.parse(claimed)
        except InvalidReference:
            return None

    def _manifest_not_found(self, repository: str, reference: str,
                            response: requests.Response) -> NotFound:
        url = response.url
        codes = _error_codes(response)
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
            _expect_ok(response, f"tag list of {repository}")
            try:
                tags = json.loads(_read_capped(response, MAX_MANIFEST_SIZE,
                                               "tag list")).get("tags")
            except (ValueError, AttributeError):
                return []
            except _TRANSIENT as e:
                raise RegistryUnreachable(
                    f"the tag list of {repository} broke off: "
                    f"{_reason(e)}") from None
        return sorted(t for t in tags or [] if isinstance(t, str))

    def blob_range(self, repository: str, descriptor: Descriptor,
                   start: int, length: int) -> bytes | None:
        """A few bytes from inside a blob, or None if the server won't say.

        Only for hints (a gzip trailer's size); nothing relies on them.
        """
        response = self._request(
            "GET", f"{repository}/blobs/{descriptor.digest}", repository,
            headers={"Range": f"bytes={start}-{start + length - 1}",
                     "Accept-Encoding": "identity"}, stream=True)
        with response:
            if response.status_code != 206:
                return None
            try:
                data = response.raw.read(length + 1)
            except _BODY_ERRORS as e:
                LOG.debug("range probe of %s failed: %s", descriptor.digest,
                          _reason(e))
                return None
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
                    have: Hasher | None = None) -> Iterator[bytes]:
        """Stream a blob, resuming after breaks, verifying size and digest.

        `have` holds the blob's first bytes, already hashed (a partial
        download kept on disk): only the rest is requested and yielded.
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
        deadline = time.monotonic() + self.options.give_up_after
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
                for chunk in _arriving(response):
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
            except _TRANSIENT as e:
                failures = _failures_after(failures, reached, hasher.size)
                reached = hasher.size
                if failures > self.options.retries or _past(deadline):
                    raise RegistryUnreachable(
                        f"download of {what} kept failing after "
                        f"{failures} attempts ({_reason(e)}); try again, "
                        "perhaps with a longer --timeout") from e
                LOG.info("%s interrupted at byte %d: %s; resuming", what,
                         hasher.size, _reason(e))
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
                    206, _redact(response.url))
            return 0
        _expect_ok(response, what)
        raise RegistryError(
            f"{what}: unexpected HTTP {status}", status,
            _redact(response.url))


def _log_rate_limit(response: requests.Response) -> None:
    """Docker Hub says how many pulls are left; --verbose shows it."""
    remaining = response.headers.get("ratelimit-remaining")
    if remaining:
        LOG.debug("%s: ratelimit-remaining %s", urllib.parse.urlsplit(
            response.url).netloc, remaining)


def _failures_after(failures: int, reached: int, now: int) -> int:
    """Count a failure; progress of a chunk or more since the last forgives."""
    return 1 if now - reached >= CHUNK_SIZE else failures + 1


def _expect_ok(response: requests.Response, what: str) -> None:
    if response.status_code == 200:
        return
    if response.status_code == 404:
        raise NotFound(f"{what} not found", 404, _redact(response.url))
    codes = _error_codes(response)
    raise RegistryError(
        f"fetching {what} failed: HTTP {response.status_code}"
        + (f" ({', '.join(codes)})" if codes else ""),
        response.status_code, _redact(response.url))


def _arriving(response: requests.Response) -> Iterator[bytes]:
    """A body's bytes as they arrive, up to CHUNK_SIZE at a time.

    iter_content waits to fill a whole chunk and, when the connection
    breaks, drops what it had gathered; a resumed download would then
    start up to a chunk short of where the data really stopped.
    """
    read1 = getattr(response.raw, "read1", None)
    if read1 is None:  # urllib3 before 2.3: lose at most a small chunk
        yield from response.iter_content(64 << 10)
        return
    while True:
        try:
            chunk = read1(CHUNK_SIZE, decode_content=True)
        except urllib3.exceptions.ProtocolError as e:
            raise requests.exceptions.ChunkedEncodingError(e) from e
        except urllib3.exceptions.ReadTimeoutError as e:
            raise requests.ConnectionError(e) from e
        except urllib3.exceptions.SSLError as e:
            raise requests.exceptions.SSLError(e) from e
        if not chunk:
            return
        yield chunk


def _past(deadline: float, wait: float = 0.0) -> bool:
    return time.monotonic() + wait >= deadline


def _timeout_hint(error: Exception) -> str:
    if isinstance(error, requests.Timeout) or "timed out" in str(error):
        return "; check the network, or allow more time with --timeout"
    return ""


def _read_capped(response: requests.Response, cap: int, what: str) -> bytes:
    length = response.headers.get("Content-Length")
    if length and length.isdigit() and int(length) > cap:
        raise RegistryError(
            f"{what} is {int(length)} bytes, over the {cap} byte limit; "
            "refusing it", response.status_code, _redact(response.url))
    parts, total = [], 0
    for chunk in response.iter_content(CHUNK_SIZE):
        total += len(chunk)
        if total > cap:
            raise RegistryError(
                f"{what} is over the {cap} byte limit; refusing it",
                response.status_code, _redact(response.url))
        parts.append(chunk)
    return b"".join(parts)


def _error_codes(response: requests.Response) -> list[str]:
    """The `errors[].code` values of a registry error body, if any."""
    try:
        body = json.loads(response.raw.read(65536, decode_content=True))
        return [str(e.get("code", "")) for e in body.get("errors", [])
                if isinstance(e, dict)]
    except (ValueError, AttributeError, OSError,
            requests.RequestException):
        return []


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _redact(url: str) -> str:
    """Drop query strings: signed blob URLs carry credentials there."""
    split = urllib.parse.urlsplit(url)
    return urllib.parse.urlunsplit(split._replace(query="", fragment=""))


def _verify_reason(error: Exception) -> str:
    """OpenSSL's reason a certificate was refused, e.g. 'self-signed ...'."""
    text = str(error)
    marker = "certificate verify failed: "
    if marker in text:
        return text.split(marker, 1)[1].split(" (_ssl", 1)[0][:200]
    return "certificate verify failed"


def _no_auth(request: requests.PreparedRequest) -> requests.PreparedRequest:
    return request


_REASONS = (
    ("connection refused", "connection refused"),
    ("timed out", "timed out"),
    ("connection reset", "connection reset"),
    ("certificate verify failed", "certificate verify failed"),
    ("remote end closed", "connection closed without a response"),
    ("incompleteread", "connection closed mid-transfer"),
    ("connection broken", "connection closed mid-transfer"),
    ("connection aborted", "connection closed"),
    ("no route to host", "no route to host"),
    ("network is unreachable", "network is unreachable"),
)


def _reason(error: Exception) -> str:
    """A short human reason for a requests/urllib3 exception.

    Never the exception's own text in full: requests puts the URL, with any
    signed query string, into it.
    """
    text = str(error).lower()
    for marker, reason in _REASONS:
        if marker in text:
            return reason
    return type(error).__name__


def _is_dns_failure(error: Exception) -> bool:
    text = str(error)
    return any(marker in text for marker in (
        "NameResolutionError", "Name or service not known",
        "nodename nor servname", "Temporary failure in name resolution",
        "No address associated with hostname"))

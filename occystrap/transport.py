"""HTTP to one registry: retries, redirects, TLS, errors and auth.

Pulls (registry.py) and pushes (upload.py) both speak through a Transport:

    with Transport(registry, options, credentials) as transport:
        response = transport.request("GET", "app/manifests/1.0",
                                     scope("app"), "app")

request() answers an authentication challenge once per call with a token
for `scope` (several repositories and actions may share one token, as a
cross-repository mount needs). Bodies of bytes are retried like any
request; a streamed body is not replayed (BodyNotReplayable), and 5xx
answers to it come back to the caller, who knows where to resume.
"""

import email.utils
import json
import logging
import random
import threading
import time
import urllib.parse
from typing import Iterable, Iterator, Union

import requests
import urllib3

from occystrap import tls
from occystrap.auth import Authenticator
from occystrap.credentials import CredentialSource, Credentials
from occystrap.errors import (
    AccessDenied, BodyNotReplayable, NotFound, RateLimited, RegistryError,
    RegistryUnreachable)
from occystrap.humanize import human_duration
from occystrap.options import TransportOptions
from occystrap.reference import Registry

LOG = logging.getLogger(__name__)

CHUNK_SIZE = 1 << 20
_RETRY_STATUSES = {408, 429, 500, 502, 503, 504}
_MAX_REDIRECTS = 5
# Errors worth retrying: the link or the server had a moment.
TRANSIENT = (requests.ConnectionError, requests.Timeout,
             requests.exceptions.ChunkedEncodingError)
# What urllib3 raises when a body is read from it directly.
BODY_ERRORS = (urllib3.exceptions.ProtocolError,
               urllib3.exceptions.ReadTimeoutError,
               urllib3.exceptions.SSLError)
# What a request may carry: bytes are re-sent on a retry, a stream is not.
Body = Union[bytes, Iterable[bytes], None]


def _replayable(body: Body) -> bool:
    return body is None or isinstance(body, bytes)


class Transport:
    """HTTP to one registry, with our retry, redirect, TLS and auth policy."""

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
        # One thread finds the API root; the others wait for its answer
        # rather than each pinging (and trying https on) the registry.
        self._finding = threading.Lock()

    def close(self) -> None:
        self.session.close()
        self.trust.close()

    def __enter__(self) -> "Transport":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _send(self, method: str, url: str, *, headers: dict | None = None,
              params: dict | None = None, data: dict | None = None,
              body: Body = None, stream: bool = False,
              deadline: float | None = None,
              timeout: tuple[float, float] | None = None
              ) -> requests.Response:
        """One logical request: retries transient failures, follows redirects.

        Redirects are followed here, not by requests, so that credentials
        never travel to another host and https is never downgraded. No retry
        starts after `deadline` (monotonic; default: give_up_after from now).
        A body of bytes is sent again on a retry; a streamed body (an
        iterator, as an upload is) cannot be, so its failure raises
        BodyNotReplayable and its answer is returned whatever it is: the
        caller resumes from where the registry says the upload stands.
        """
        headers = dict(headers or {})
        attempt = 0
        if deadline is None:
            deadline = time.monotonic() + self.options.give_up_after
        while True:
            try:
                response = self._follow(method, url, headers, params,
                                        data if body is None else body,
                                        stream, timeout)
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
                    f"({reason(e)}); if it speaks plain HTTP, give the "
                    f"registry as http://{self.registry.host}") from e
            except TRANSIENT as e:
                if not _replayable(body):
                    raise BodyNotReplayable(
                        f"sending to {redact(url)} broke off: {reason(e)}"
                    ) from e
                if _is_dns_failure(e):
                    raise RegistryUnreachable(
                        f"cannot resolve registry host "
                        f"{urllib.parse.urlsplit(url).hostname}; check the "
                        "registry name and your DNS or proxy settings") from e
                attempt += 1
                if attempt > self.options.retries or past(deadline):
                    raise RegistryUnreachable(
                        f"cannot reach {redact(url)} after {attempt} "
                        f"attempts: {reason(e)}{timeout_hint(e)}") from e
                self.pause(attempt, None, f"{reason(e)}", deadline)
                continue
            if response.status_code not in _RETRY_STATUSES \
                    or not _replayable(body):
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
                    "pull limit", response.status_code, redact(url))
            if attempt > self.options.retries \
                    or past(deadline, retry_after or 0.0):
                response.close()
                hint = ("the registry is rate limiting; authenticate for a "
                        "higher limit or try later"
                        if response.status_code == 429
                        else "the registry is failing; try again later")
                raise RegistryError(
                    f"{answered} answered HTTP "
                    f"{response.status_code} to {attempt} attempts for "
                    f"{redact(response.url)}; {hint}", response.status_code,
                    redact(response.url))
            response.close()
            self.pause(attempt, retry_after, f"HTTP {response.status_code}",
                       deadline)

    def _follow(self, method: str, url: str, headers: dict,
                params: dict | None, data: dict | Body, stream: bool,
                timeout: tuple[float, float] | None = None
                ) -> requests.Response:
        timeout = timeout or (self.options.connect_timeout,
                              self.options.read_timeout)
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
                    "Location", response.status_code, redact(url))
            target = urllib.parse.urljoin(url, location)
            split = urllib.parse.urlsplit(target)
            if urllib.parse.urlsplit(url).scheme == "https" \
                    and split.scheme != "https":
                raise RegistryError(
                    f"{self.registry.host} redirected from https to "
                    f"{split.scheme}; refusing to downgrade",
                    response.status_code, redact(target))
            if response.status_code in (301, 302, 303) and method == "POST":
                method, data = "GET", None  # as browsers and requests do
            if split.netloc != origin.netloc:
                # Signed blob URLs carry their own authority; our
                # credentials (header or token form) belong to the registry
                # and its realm alone.
                headers = {k: v for k, v in headers.items()
                           if k.lower() != "authorization"}
                data = None
            LOG.debug("redirected to %s", redact(target))
            url, params = target, None
        raise RegistryError(f"too many redirects for {redact(url)}",
                            None, redact(url))

    def pause(self, attempt: int, retry_after: float | None,
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
        with self._finding:
            if not self._base_url:
                self._base_url = self._find_base_url()
            return self._base_url

    def _find_base_url(self) -> str:
        registry = self.registry
        if registry.scheme:
            scheme = registry.scheme
        elif registry.is_local and self._answers_plain_http():
            return f"http://{registry.host}/v2"
        else:
            scheme = "https"
        url = f"{scheme}://{registry.host}/v2/"
        response = self._send("GET", url)
        response.close()
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
        return f"{scheme}://{registry.host}/v2"

    def _answers_plain_http(self) -> bool:
        """Whether a loopback registry's API answers over plain http.

        Most do (docker's registry image, kind and k3s mirrors), and plain
        http never leaves the host, so it is asked first: that spares
        loading the CA bundle for a TLS handshake bound to fail. Only an
        API answer counts; anything else (a TLS port answers 400) leaves
        https to be tried, and its failure (say, an unknown CA) to be the
        one reported.
        """
        url = f"http://{self.registry.host}/v2/"
        try:
            # One attempt: a port that drops plain http unanswered may well
            # speak TLS, and waiting out the retries' backoff before trying
            # it would cost every command seconds.
            response = self._send("GET", url, deadline=time.monotonic())
        except RegistryUnreachable as e:
            LOG.debug("plain http unusable for %s (%s); trying https",
                      self.registry.host, e)
            return False
        except RateLimited:
            raise
        except RegistryError:
            # It answered over http, with a status worth retrying: ask
            # again with the usual retries, as for any request.
            response = self._send("GET", url)
        response.close()
        if response.status_code == 401:
            self.auth.remember(response.headers.get("WWW-Authenticate"))
        return response.status_code in (200, 401)

    def request(self, method: str, path: str, scope: str, repository: str,
                action: str = "pull", *, headers: dict | None = None,
                stream: bool = False, body: Body = None,
                deadline: float | None = None,
                timeout: tuple[float, float] | None = None
                ) -> requests.Response:
        """A request to the API (a path under /v2/, or a full URL the
        registry gave, such as an upload location), answering its
        authentication challenge once.

        `scope` is the token scope it needs (see auth.scope); refusals name
        the repository and the action ("pull", "push") that was refused.
        `timeout` (connect, read) replaces the options' for this request.
        """
        url = path if "://" in path else f"{self.base_url()}/{path}"
        headers = dict(headers or {})
        for answered in (False, True):
            authorization = self.auth.header(scope)
            if authorization:
                headers["Authorization"] = authorization
            response = self._send(method, url, headers=headers, stream=stream,
                                  body=body, deadline=deadline,
                                  timeout=timeout)
            if response.status_code != 401 or answered:
                break
            response.close()
            if not _replayable(body):
                raise BodyNotReplayable(
                    f"{self.registry.host} asked to authenticate after a "
                    f"streamed upload to {repository} had been sent")
            # Once only: a token that expired mid-pull is renewed here.
            self.auth.answer(response.headers.get("WWW-Authenticate", ""),
                             scope, url, rejected=authorization)
        if response.status_code == 401:
            response.close()
            raise self.auth.refusal(
                response.headers.get("WWW-Authenticate", ""), repository, url,
                action)
        if response.status_code == 403:
            with response:
                codes, messages = error_details(response)
            refused = "" if action == "pull" else f" ({action} refused)"
            said = f" (the registry says: {messages[0][:200]})" \
                if messages else ""
            error = AccessDenied(
                f"access denied to {repository} on {self.registry.host}"
                + self.auth.as_user() + refused + said
                + "; check the repository name and your permissions",
                403, url)
            # A push may be refused for want of room, not of permission.
            error.codes, error.messages = codes, messages
            raise error
        return response


def log_rate_limit(response: requests.Response) -> None:
    """Docker Hub says how many pulls are left; --verbose shows it."""
    remaining = response.headers.get("ratelimit-remaining")
    if remaining:
        LOG.debug("%s: ratelimit-remaining %s", urllib.parse.urlsplit(
            response.url).netloc, remaining)


def expect_ok(response: requests.Response, what: str) -> None:
    if response.status_code == 200:
        return
    if response.status_code == 404:
        raise NotFound(f"{what} not found", 404, redact(response.url))
    codes = error_codes(response)
    raise RegistryError(
        f"fetching {what} failed: HTTP {response.status_code}"
        + (f" ({', '.join(codes)})" if codes else ""),
        response.status_code, redact(response.url))


def arriving(response: requests.Response) -> Iterator[bytes]:
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


def past(deadline: float, wait: float = 0.0) -> bool:
    return time.monotonic() + wait >= deadline


def timeout_hint(error: Exception) -> str:
    if isinstance(error, requests.Timeout) or "timed out" in str(error):
        return "; check the network, or allow more time with --timeout"
    return ""


def read_capped(response: requests.Response, cap: int, what: str) -> bytes:
    length = response.headers.get("Content-Length")
    if length and length.isdigit() and int(length) > cap:
        raise RegistryError(
            f"{what} is {int(length)} bytes, over the {cap} byte limit; "
            "refusing it", response.status_code, redact(response.url))
    parts, total = [], 0
    for chunk in response.iter_content(CHUNK_SIZE):
        total += len(chunk)
        if total > cap:
            raise RegistryError(
                f"{what} is over the {cap} byte limit; refusing it",
                response.status_code, redact(response.url))
        parts.append(chunk)
    return b"".join(parts)


def error_codes(response: requests.Response) -> list[str]:
    """The `errors[].code` values of a registry error body, if any."""
    return error_details(response)[0]


def error_details(response: requests.Response
                  ) -> tuple[list[str], list[str]]:
    """The `errors[].code` and `errors[].message` of an error body.

    Read once (the body is consumed); messages are cut to one line.
    """
    try:
        # A response read whole (not streamed) has its body in .content.
        if getattr(response, "_content_consumed", False) or response.raw is None:
            raw = response.content[:65536]
        else:
            raw = response.raw.read(65536, decode_content=True)
        body = json.loads(raw)
        errors = [e for e in body.get("errors", []) if isinstance(e, dict)]
    except (ValueError, AttributeError, OSError,
            requests.RequestException, urllib3.exceptions.HTTPError):
        return [], []
    codes = [str(e.get("code", "")) for e in errors]
    messages = [" ".join(str(e["message"]).split()) for e in errors
                if e.get("message")]
    return codes, messages


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


def redact(url: str) -> str:
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


def reason(error: Exception) -> str:
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

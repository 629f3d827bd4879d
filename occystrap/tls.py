"""Which certificate authorities a registry connection trusts, and proxy bypass."""

import logging
import os
import tempfile
import urllib.parse
from pathlib import Path
from typing import Mapping

from occystrap.errors import ConfigurationError
from occystrap.reference import Registry

LOG = logging.getLogger(__name__)

# docker's per-registry CA directory: certs.d/HOST[:PORT]/*.crt.
DEFAULT_CERTS_D = Path("/etc/docker/certs.d")
# Passed as a request's proxies, these beat HTTP(S)_PROXY from the
# environment: requests drops None entries after merging the two.
NO_PROXIES = {"http": None, "https": None, "all": None}
_PEM_MARKER = b"-----BEGIN CERTIFICATE-----"


class TrustStore:
    """The `verify` value for requests, for one registry.

    Extra CAs (--ca-cert, certs.d) are added to the default bundle, as
    docker adds them to the system pool, so a blob redirect to a public CDN
    still verifies. requests takes only a file, so the union is written to
    a temporary file that `close()` removes.
    """

    def __init__(self, host: str, verify: bool | str = True,
                 certs_d: Path | str | None = DEFAULT_CERTS_D,
                 environ: Mapping[str, str] | None = None) -> None:
        self._bundle: Path | None = None
        if verify is False:
            # Said once here instead of once per host by urllib3; its
            # warnings filter is process-wide (and threads share it).
            LOG.warning("not verifying the TLS certificate of %s "
                        "(--insecure): anyone on the path can read and "
                        "alter what is fetched", host)
            import urllib3
            urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)
            self.verify: bool | str = False
            return
        env = os.environ if environ is None else environ
        extra = [Path(verify)] if isinstance(verify, str) else []
        extra += certs_d_cas(Path(certs_d), host) if certs_d else []
        base = default_bundle(env)
        if not Path(base).is_file():
            raise ConfigurationError(
                f"the CA bundle {base} named by the environment does not "
                "exist; fix REQUESTS_CA_BUNDLE or SSL_CERT_FILE")
        if not extra:
            self.verify = base
            return
        parts = [_read_pem(Path(base), "the default CA bundle")]
        for path in extra:
            LOG.debug("trusting the CAs in %s for %s", path, host)
            parts.append(_read_pem(path, "CA certificate file"))
        handle, name = tempfile.mkstemp(prefix="occystrap-ca-", suffix=".pem")
        with os.fdopen(handle, "wb") as bundle:
            bundle.write(b"\n".join(parts))
        self._bundle = Path(name)
        self.verify = name

    def close(self) -> None:
        if self._bundle is not None:
            self._bundle.unlink(missing_ok=True)
            self._bundle = None


def default_bundle(environ: Mapping[str, str]) -> str:
    """The CA bundle used without --ca-cert: the environment's, else certifi's.

    REQUESTS_CA_BUNDLE is requests' own convention and SSL_CERT_FILE
    OpenSSL's; both are honoured as curl and docker users expect.
    """
    for name in ("REQUESTS_CA_BUNDLE", "SSL_CERT_FILE", "CURL_CA_BUNDLE"):
        if environ.get(name):
            return environ[name]
    import requests.certs  # not at import: keeps `occystrap --help` quick
    # requests' documented CA hook (distributions point it at the system
    # bundle); types-requests declares nothing in requests.certs.
    return requests.certs.where()  # type: ignore[attr-defined]


def certs_d_cas(certs_d: Path, host: str) -> list[Path]:
    """docker's certs.d/HOST[:PORT]/*.crt files for `host`."""
    directory = certs_d / host
    try:
        return sorted(p for p in directory.glob("*.crt") if p.is_file())
    except OSError:
        return []


def _read_pem(path: Path, what: str) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ConfigurationError(
            f"cannot read {what} {path}: {e.strerror}") from None
    if _PEM_MARKER not in data:
        raise ConfigurationError(
            f"{what} {path} holds no PEM certificate (-----BEGIN "
            "CERTIFICATE-----); give a PEM file")
    return data.rstrip() + b"\n"


def proxies_for(url: str) -> dict | None:
    """No proxy for loopback, as Go's net/http (and so docker) decides."""
    netloc = urllib.parse.urlsplit(url).netloc.rpartition("@")[2]
    if netloc and Registry(netloc.lower()).is_local:
        return NO_PROXIES
    return None

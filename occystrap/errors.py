"""The one exception tree that library code raises and cli.py reports.

    OccystrapError
     ├── InvalidReference        registry, image, tag or digest is malformed
     ├── RegistryError           the registry answered, but not with what we need
     │    ├── AuthenticationFailed   401 even after answering the challenge
     │    ├── AccessDenied           403
     │    ├── NotFound               404 for a repository, tag or blob
     │    ├── RateLimited            429 with a wait too long to sit out
     │    └── UploadRefused          a push the registry will not take (405, 413, quota)
     ├── RegistryUnreachable     DNS, connection, TLS or timeout failures
     │    └── BodyNotReplayable  a streamed upload broke off (resume it)
     ├── ConfigurationError      a CA file, docker config or credential helper is unusable
     ├── ManifestError           malformed, ambiguous or unsupported manifest/config
     ├── PlatformNotFound        an index holds no manifest for the platform asked for
     ├── VerificationError       a digest or size does not match what was promised
     ├── LayerError              a layer cannot be decompressed or unpacked safely
     ├── OutputError             the destination cannot be written as asked
     ├── StoreError              a shared directory is missing, damaged or inconsistent
     └── Cancelled               work stopped early because another part failed

Every message says what went wrong and, where there is one, what to do next.
"""


class OccystrapError(Exception):
    """Root of every error occystrap reports to the user."""


class InvalidReference(OccystrapError):
    pass


class RegistryError(OccystrapError):
    def __init__(self, message: str, status: int | None = None,
                 url: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.url = url
        # The registry's own error codes and messages, where it sent them.
        self.codes: list[str] = []
        self.messages: list[str] = []


class AuthenticationFailed(RegistryError):
    pass


class AccessDenied(RegistryError):
    pass


class NotFound(RegistryError):
    pass


class RateLimited(RegistryError):
    pass


class UploadRefused(RegistryError):
    """The registry will not store what is pushed: read-only, too large, full."""


class RegistryUnreachable(OccystrapError):
    pass


class BodyNotReplayable(RegistryUnreachable):
    """A streamed request body broke off; only its sender can resume it."""


class ConfigurationError(OccystrapError):
    pass


class ManifestError(OccystrapError):
    pass


class PlatformNotFound(OccystrapError):
    pass


class VerificationError(OccystrapError):
    pass


class LayerError(OccystrapError):
    pass


class OutputError(OccystrapError):
    pass


class StoreError(OccystrapError):
    pass


class Cancelled(OccystrapError):
    """Another layer failed; this one stopped early.

    The pipeline reports that first failure, not the layers it cancelled.
    """

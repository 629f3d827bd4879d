"""Settings for talking to registries; importing this loads no HTTP code."""

import dataclasses

from occystrap.tls import DEFAULT_CERTS_D


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
    certs_d: str | None = str(DEFAULT_CERTS_D)

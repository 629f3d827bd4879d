"""Content digests: parsing, incremental hashing and verification."""

import dataclasses
import hashlib
import re

from occystrap.errors import InvalidReference, VerificationError

# Only algorithms whose hex length we know can be checked before a digest
# is used in a URL or a file name.
_HEX_LENGTHS = {"sha256": 64, "sha512": 128}
_DIGEST_RE = re.compile(r"([a-z0-9]+(?:[+._-][a-z0-9]+)*):([a-f0-9]+)\Z")


@dataclasses.dataclass(frozen=True)
class Digest:
    algorithm: str
    hex: str

    @classmethod
    def parse(cls, text: str) -> "Digest":
        match = _DIGEST_RE.match(text) if isinstance(text, str) else None
        if not match:
            raise InvalidReference(
                f"invalid digest {text!r}: expected ALGORITHM:HEX, "
                "e.g. sha256:<64 hex digits>")
        algorithm, hexpart = match.groups()
        expected = _HEX_LENGTHS.get(algorithm)
        if expected is None:
            raise InvalidReference(
                f"unsupported digest algorithm in {text!r}: "
                f"use one of {', '.join(sorted(_HEX_LENGTHS))}")
        if len(hexpart) != expected:
            raise InvalidReference(
                f"invalid digest {text!r}: {algorithm} needs {expected} "
                f"hex digits, got {len(hexpart)}")
        return cls(algorithm, hexpart)

    @classmethod
    def of(cls, data: bytes, algorithm: str = "sha256") -> "Digest":
        return cls(algorithm, hashlib.new(algorithm, data).hexdigest())

    def hasher(self) -> "Hasher":
        return Hasher(self.algorithm)

    def short(self) -> str:
        return self.hex[:12]

    def __str__(self) -> str:
        return f"{self.algorithm}:{self.hex}"


class Hasher:
    """Counts and hashes bytes as they stream past."""

    def __init__(self, algorithm: str = "sha256") -> None:
        self._hash = hashlib.new(algorithm)
        self.algorithm = algorithm
        self.size = 0

    def update(self, chunk: bytes | bytearray | memoryview) -> None:
        self._hash.update(chunk)
        self.size += len(chunk)

    def digest(self) -> Digest:
        return Digest(self.algorithm, self._hash.hexdigest())


def verify(what: str, expected: Digest, actual: Digest) -> None:
    if expected != actual:
        raise VerificationError(
            f"digest mismatch for {what}: expected {expected}, got {actual}; "
            "the data is corrupt and was not saved")

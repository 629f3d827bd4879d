"""A throwaway certificate authority for TLS tests, made with `cryptography`."""

from __future__ import annotations

import dataclasses
import datetime
import ipaddress
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID


@dataclasses.dataclass(frozen=True)
class Issued:
    """A certificate and its key, as PEM files and as objects."""

    cert: Path
    key: Path
    certificate: x509.Certificate
    private_key: rsa.RSAPrivateKey


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _write(directory: Path, stem: str, certificate: x509.Certificate,
           key: rsa.RSAPrivateKey) -> Issued:
    directory.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = directory / f"{stem}.crt", directory / f"{stem}.key"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    ))
    return Issued(cert_path, key_path, certificate, key)


def _builder(subject: x509.Name, issuer: x509.Name, public_key) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.timezone.utc)
    return (
        x509.CertificateBuilder()
        .subject_name(subject).issuer_name(issuer).public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
    )


def new_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def make_ca(directory: Path, common_name: str = "occystrap test CA") -> Issued:
    key = new_key()
    name = _name(common_name)
    certificate = (
        _builder(name, name, key.public_key())
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=True, content_commitment=False, key_encipherment=False,
            data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
            encipher_only=False, decipher_only=False,
        ), critical=True)
        .sign(key, hashes.SHA256())
    )
    return _write(directory, "ca", certificate, key)


def issue_server_cert(
    ca: Issued, directory: Path, names: list[str], stem: str = "server",
) -> Issued:
    """A leaf for `names` (DNS names or IP addresses), signed by `ca`."""
    key = new_key()
    alternatives: list[x509.GeneralName] = []
    for name in names:
        try:
            alternatives.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            alternatives.append(x509.DNSName(name))
    certificate = (
        _builder(_name(names[0]), ca.certificate.subject, key.public_key())
        .add_extension(x509.SubjectAlternativeName(alternatives), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]),
                       critical=False)
        .sign(ca.private_key, hashes.SHA256())
    )
    return _write(directory, stem, certificate, key)


def self_signed(directory: Path, common_name: str, stem: str) -> Issued:
    """A self-signed certificate, e.g. a token service's signing key."""
    key = new_key()
    name = _name(common_name)
    certificate = _builder(name, name, key.public_key()).sign(key, hashes.SHA256())
    return _write(directory, stem, certificate, key)

"""Throwaway certificate authorities for the termination tests, made with `cryptography`.

Every key is ECDSA P-256; certificates carry what OpenSSL's verifier and curl expect of a
real one (SAN, key identifiers, key usage, extended key usage).
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

NOW = dt.datetime.now(dt.timezone.utc)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


class CA:
    """A root CA that issues server and client certificates."""

    def __init__(self, name: str) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        public = self.key.public_key()
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(public)
            .serial_number(x509.random_serial_number())
            .not_valid_before(NOW - dt.timedelta(days=1))
            .not_valid_after(NOW + dt.timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
            .sign(self.key, hashes.SHA256())
        )

    @property
    def pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def write(self, path: Path) -> Path:
        path.write_bytes(self.pem)
        return path

    def issue(
        self,
        names: list[str],
        *,
        cn: str | None = None,
        serial: int | None = None,
        not_before: dt.datetime | None = None,
        days: float = 90,
        client: bool = False,
    ) -> tuple[bytes, bytes, int]:
        """(leaf + CA chain PEM, key PEM, serial) for ``names`` (SAN DNS names)."""
        key = ec.generate_private_key(ec.SECP256R1())
        serial = serial or x509.random_serial_number()
        start = not_before or NOW - dt.timedelta(hours=1)
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn or names[0])]))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(serial)
            .not_valid_before(start)
            .not_valid_after(start + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH]
                ),
                critical=False,
            )
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()),
                critical=False,
            )
        )
        if names:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False
            )
        cert = builder.sign(self.key, hashes.SHA256())
        chain = cert.public_bytes(serialization.Encoding.PEM) + self.pem
        return chain, _key_pem(key), serial

    def write_pair(
        self, folder: Path, stem: str, names: list[str], *, combined: bool = True, **kw: object
    ) -> tuple[Path, Path | None, int]:
        """Write a certificate: ``stem.pem`` holding chain and key, or chain + ``stem.key``.

        Returns:
            (chain path, key path or None when combined, serial).
        """
        chain, key, serial = self.issue(names, **kw)  # type: ignore[arg-type]
        folder.mkdir(parents=True, exist_ok=True)
        cert_path = folder / f"{stem}.pem"
        if combined:
            cert_path.write_bytes(chain + key)
            return cert_path, None, serial
        key_path = folder / f"{stem}.key"
        cert_path.write_bytes(chain)
        key_path.write_bytes(key)
        return cert_path, key_path, serial


def serial_of(der: bytes) -> int:
    """The serial number of a DER certificate (what a client was served)."""
    return x509.load_der_x509_certificate(der).serial_number

"""Certificates for tests of TLS, from a test certificate authority (trustme): server and client
certificates written as PEM files, and client contexts that trust the authority."""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

import trustme
from cryptography import x509


@dataclass(frozen=True)
class Pem:
    """A certificate chain and its private key, as PEM files."""

    cert: Path
    key: Path


class Authority:
    """A certificate authority whose certificate is written to `folder`/`name`-ca.pem."""

    def __init__(self, folder: Path, name: str = "test"):
        self.folder = folder
        self.name = name
        self._ca = trustme.CA(organization_name=f"Grayscale {name} CA")
        self.ca_file = folder / f"{name}-ca.pem"
        self._ca.cert_pem.write_to_path(str(self.ca_file))
        self._issued = 0

    def issue(self, *names: str, cert: Path | None = None, key: Path | None = None) -> Pem:
        """A certificate for `names` (default 127.0.0.1 and localhost), written to `cert` and
        `key` (new files unless given: giving the same paths again replaces them, a renewal)."""
        self._issued += 1
        issued = self._ca.issue_cert(*(names or ("127.0.0.1", "localhost")))
        cert = cert or self.folder / f"{self.name}-{self._issued}.pem"
        key = key or self.folder / f"{self.name}-{self._issued}-key.pem"
        issued.private_key_pem.write_to_path(str(key))
        cert.write_bytes(b"".join(blob.bytes() for blob in issued.cert_chain_pems))
        return Pem(cert, key)

    def client_context(self, **options: object) -> ssl.SSLContext:
        """A client context that trusts this authority (`options`: attributes set on it, e.g.
        maximum_version)."""
        context = ssl.create_default_context(cafile=str(self.ca_file))
        for name, value in options.items():
            setattr(context, name, value)
        return context

    def server_context(self, pem: Pem, client_authority: Authority | None = None) -> ssl.SSLContext:
        """A server context showing `pem`; with `client_authority`, it requires a client
        certificate that authority issued."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(pem.cert, pem.key)
        if client_authority is not None:
            context.verify_mode = ssl.CERT_REQUIRED
            context.load_verify_locations(cafile=str(client_authority.ca_file))
        return context


def serial_of(der: bytes | None) -> int:
    """The serial number of a certificate in DER form (as `getpeercert(True)` gives it)."""
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number

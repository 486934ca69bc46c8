"""TLS contexts for the listeners, and the self-signed certificate for first start.

Owns: `data_dir/tls/selfsigned.{crt,key}`. Generated once when `[tls]` names no
certificate, with a warning: clients will not trust it, which is fine for a first try and
for tests, never for production.
"""
from __future__ import annotations

import datetime
import ipaddress
import logging
import os
import ssl
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from smtprelay.config import Config

log = logging.getLogger("smtprelay.tls")


def certificate_paths(config: Config) -> tuple[Path, Path]:
    """The certificate and key to use, generating a self-signed pair if none is configured."""
    if config.tls.cert_file is not None and config.tls.key_file is not None:
        return config.tls.cert_file, config.tls.key_file
    directory = config.server.data_dir / "tls"
    cert, key = directory / "selfsigned.crt", directory / "selfsigned.key"
    if not (cert.is_file() and key.is_file()):
        generate_self_signed(config.server.hostname, cert, key)
        log.warning("tls: no [tls] cert_file/key_file configured; generated a self-signed certificate "
                    "for %s at %s (clients will not trust it; configure a real certificate)",
                    config.server.hostname, cert)
    else:
        log.warning("tls: using the self-signed certificate %s (configure [tls] cert_file/key_file)", cert)
    return cert, key


def generate_self_signed(hostname: str, cert_path: Path, key_path: Path) -> None:
    cert_path.parent.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)])
    now = datetime.datetime.now(datetime.timezone.utc)
    alt = [x509.DNSName(hostname), x509.DNSName("localhost"),
           x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.IPAddress(ipaddress.ip_address("::1"))]
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=825))
            .add_extension(x509.SubjectAlternativeName(alt), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    key_bytes = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption())
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(key_bytes)
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def certificate_expiry(cert: Path) -> float:
    """The certificate's notAfter as Unix time (for the expiry metric and alert)."""
    from cryptography import x509
    return x509.load_pem_x509_certificate(cert.read_bytes()).not_valid_after_utc.timestamp()


def server_context(cert: Path, key: Path) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert, key)
    return context

"""HTTPS: browsers give the microphone and camera only to secure pages, so a phone on the LAN needs
the page over HTTPS. ``--tls-cert``/``--tls-key`` serve a real certificate; ``--tls-self-signed``
makes (once, then reuses) a self-signed one for this machine's names and addresses, for demos.
In production a reverse proxy that terminates TLS does the same job (README, Deploying)."""
from __future__ import annotations

import datetime
import ipaddress
import os
import socket
import ssl
from pathlib import Path

SELF_SIGNED_DIR = Path(os.environ.get("MMS_CACHE", Path.home() / ".cache" / "mms")) / "tls"


def local_addresses() -> set[str]:
    """This machine's names and IP addresses, which the self-signed certificate names."""
    names = {"localhost", "127.0.0.1", "::1", socket.gethostname()}
    try:
        names |= {info[4][0] for info in socket.getaddrinfo(socket.gethostname(), None)}
    except OSError:
        pass
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:  # the LAN address (no packet is sent)
        try:
            probe.connect(("192.0.2.1", 9))
            names.add(probe.getsockname()[0])
        except OSError:
            pass
    return names


def self_signed(folder: Path = SELF_SIGNED_DIR, names: set[str] | None = None) -> tuple[Path, Path]:
    """(certificate, key) paths: made with the ``cryptography`` package the first time, reused
    while they cover ``names`` and are valid for another day."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    names = names or local_addresses()
    cert_path, key_path = folder / "self-signed.crt", folder / "self-signed.key"
    now = datetime.datetime.now(datetime.timezone.utc)
    if cert_path.exists() and key_path.exists():
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        covered = {str(n.value) for n in cert.extensions.get_extension_for_class(
            x509.SubjectAlternativeName).value}
        if names <= covered and cert.not_valid_after_utc > now + datetime.timedelta(days=1):
            return cert_path, key_path
    key = ec.generate_private_key(ec.SECP256R1())
    sans = []
    for name in sorted(names):
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            sans.append(x509.DNSName(name))
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "multimodal media server (self-signed)")])
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=365))
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    folder.mkdir(parents=True, exist_ok=True)
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    key_path.chmod(0o600)
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert_path, key_path


def server_context(settings) -> ssl.SSLContext | None:
    """The TLS context the settings ask for, or None for plain HTTP."""
    if settings.tls_self_signed:
        cert, key = self_signed()
    elif settings.tls_cert or settings.tls_key:
        if not (settings.tls_cert and settings.tls_key):
            raise ValueError("--tls-cert and --tls-key go together")
        cert, key = settings.tls_cert, settings.tls_key
    else:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(str(cert), str(key))
    except (OSError, ssl.SSLError) as exc:
        raise ValueError(f"cannot load the TLS certificate {cert} / key {key}: {exc}") from None
    return context

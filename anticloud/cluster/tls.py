"""The cluster link's mutual TLS: each appliance's key and self-signed certificate, the peers it
pins, and the TLS contexts that trust those peers and nothing else.

Invariants:

* a certificate is named by one fingerprint, ``sha256:`` and the hex SHA-256 of its DER
  encoding (`fingerprint`), whether it arrives as PEM or DER;
* the private key is created with mode 0600 in a 0700 directory, appears whole or not at all,
  is never overwritten, and is refused when anyone but its owner can read it;
* both ends speak TLS 1.3 only and each requires the other's certificate; the pinned
  certificates are the only trust anchors, so no other certificate, however it is signed, can
  complete a handshake. Host names are not checked: the pin replaces them. `check_pinned`
  checks the fingerprint again after the handshake, so trust does not rest on OpenSSL's chain
  building alone.

Certificates are exchanged by hand and carry no authority beyond their pin; their validity
period is long (20 years) because revocation here is removing the pin, not expiry.
"""

from __future__ import annotations

import datetime
import hashlib
import os
import secrets
import ssl
import stat
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from anticloud.errors import ClusterError
from anticloud.fsutil import atomic_write, fsync_dir

__all__ = [
    "CERT_FILE",
    "KEY_FILE",
    "Identity",
    "Pins",
    "check_pinned",
    "client_context",
    "fingerprint",
    "make_identity",
    "server_context",
]

KEY_FILE = "tls.key"
CERT_FILE = "tls.crt"
VALIDITY = datetime.timedelta(days=20 * 365 + 5)
# The certificate is valid from a day before it is made, so that a peer whose clock is a little
# behind does not find it "not yet valid".
BACKDATE = datetime.timedelta(days=1)


def fingerprint(certificate: str | bytes) -> str:
    """``sha256:<hex>`` of the DER certificate, given as PEM (text or bytes) or DER.

    This form is part of the contract: the pins an operator copies between appliances, the
    ledger's records of sessions and the check after each handshake all use it."""
    return "sha256:" + hashlib.sha256(_der(certificate)).hexdigest()


def _der(certificate: str | bytes) -> bytes:
    raw = certificate.encode("ascii", "replace") if isinstance(certificate, str) else certificate
    try:
        if raw.lstrip().startswith(b"-----BEGIN"):
            return x509.load_pem_x509_certificate(raw).public_bytes(Encoding.DER)
        return x509.load_der_x509_certificate(raw).public_bytes(Encoding.DER)
    except ValueError:
        raise ClusterError("not an X.509 certificate (PEM or DER)") from None


def _pem(certificate: str | bytes) -> str:
    der = _der(certificate)
    return x509.load_der_x509_certificate(der).public_bytes(Encoding.PEM).decode("ascii")


def make_identity(directory: Path, name: str) -> str:
    """Create ``tls.key`` (Ed25519, PKCS8 PEM, 0600) and a self-signed ``tls.crt`` for ``name``
    in ``directory`` (made 0700 if new); return the certificate's fingerprint. An existing key is
    never replaced: ClusterError instead."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    key_path, cert_path = directory / KEY_FILE, directory / CERT_FILE
    if key_path.exists() or key_path.is_symlink():
        raise ClusterError(f"{key_path} already exists; refusing to overwrite a private key")
    key = Ed25519PrivateKey.generate()
    cert = _self_signed(key, name)
    _write_new(key_path, key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()))
    try:
        atomic_write(cert_path, cert.public_bytes(Encoding.PEM), 0o644)
    except BaseException:
        # A key without its certificate would make every retry refuse; take it back.
        key_path.unlink(missing_ok=True)
        raise
    return fingerprint(cert.public_bytes(Encoding.DER))


def _self_signed(key: Ed25519PrivateKey, name: str) -> x509.Certificate:
    if not name or len(name) > 64:
        raise ClusterError("a cluster identity's name must be 1 to 64 characters")
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    public = key.public_key()
    start = datetime.datetime.now(datetime.UTC) - BACKDATE
    usage = x509.KeyUsage(
        digital_signature=True, content_commitment=False, key_encipherment=False, data_encipherment=False,
        key_agreement=False, key_cert_sign=False, crl_sign=False, encipher_only=False, decipher_only=False,
    )  # fmt: skip
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + VALIDITY)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(usage, critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(public), critical=False)
        .sign(key, None)
    )


def _write_new(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` with mode 0600, whole or not at all, never replacing a file:
    written beside it, synced, then linked into place (link fails if ``path`` exists)."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.link(tmp, path)
    except FileExistsError:
        raise ClusterError(f"{path} already exists; refusing to overwrite a private key") from None
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(path.parent)


@dataclass(frozen=True)
class Identity:
    """This appliance's side of the link: where its key and certificate are, and who it is."""

    key: Path
    certificate: Path
    fingerprint: str

    @classmethod
    def load(cls, directory: Path) -> Identity:
        key, cert = directory / KEY_FILE, directory / CERT_FILE
        try:
            status = key.lstat()
            pem = cert.read_bytes()
        except FileNotFoundError as exc:
            raise ClusterError(f"{exc.filename} does not exist; make the cluster identity first") from None
        except OSError as exc:
            raise ClusterError(f"cannot read {exc.filename}: {exc.strerror}") from None
        if not stat.S_ISREG(status.st_mode):
            raise ClusterError(f"{key} is not a regular file")
        mode = stat.S_IMODE(status.st_mode)
        if mode & 0o077:
            raise ClusterError(f"{key} has mode {mode:04o}; a private key must be 0600")
        return cls(key, cert, fingerprint(pem))


@dataclass(frozen=True)
class Pins:
    """The peers this appliance talks to: fingerprint -> certificate PEM, each a trust anchor."""

    certificates: Mapping[str, str]

    @classmethod
    def of(cls, certificates: Iterable[str | bytes]) -> Pins:
        """Pin each certificate (PEM or DER) under its own fingerprint."""
        return cls({fingerprint(c): _pem(c) for c in certificates})

    @classmethod
    def expecting(cls, expected: Mapping[str, str | bytes]) -> Pins:
        """Pin certificates an operator named by fingerprint; ClusterError if one is not the
        certificate its fingerprint says (a file swapped or mistyped)."""
        pins: dict[str, str] = {}
        for claimed, certificate in expected.items():
            actual = fingerprint(certificate)
            if actual != claimed.lower():
                raise ClusterError(f"the certificate pinned as {claimed} is {actual}")
            pins[actual] = _pem(certificate)
        return cls(pins)

    def __contains__(self, fingerprint: object) -> bool:
        return fingerprint in self.certificates

    def cadata(self) -> str:
        return "".join(self.certificates[fp] for fp in sorted(self.certificates))


def _context(purpose: int, identity: Identity, pins: Pins) -> ssl.SSLContext:
    if not pins.certificates:
        raise ClusterError("no cluster peer is pinned")
    context = ssl.SSLContext(purpose)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.maximum_version = ssl.TLSVersion.TLSv1_3
    context.check_hostname = False
    context.verify_mode = ssl.CERT_REQUIRED
    context.verify_flags |= ssl.VERIFY_X509_STRICT
    try:
        context.load_cert_chain(identity.certificate, identity.key)
        context.load_verify_locations(cadata=pins.cadata())
    except ssl.SSLError as exc:
        raise ClusterError(f"cannot use the cluster identity in {identity.key.parent}: {exc.reason or exc}") from None
    except OSError as exc:
        raise ClusterError(f"cannot read the cluster identity in {identity.key.parent}: {exc.strerror}") from None
    return context


def server_context(identity: Identity, pins: Pins) -> ssl.SSLContext:
    """The worker's context: TLS 1.3, a pinned client certificate required, no session tickets
    (nothing is resumed: every session proves its certificate afresh)."""
    context = _context(ssl.PROTOCOL_TLS_SERVER, identity, pins)
    context.num_tickets = 0
    return context


def client_context(identity: Identity, pins: Pins) -> ssl.SSLContext:
    """The engine's context: TLS 1.3, presents its certificate, requires a pinned server."""
    return _context(ssl.PROTOCOL_TLS_CLIENT, identity, pins)


def check_pinned(connection: ssl.SSLSocket | ssl.SSLObject, pins: Pins) -> str:
    """The fingerprint of the peer's certificate after the handshake; ClusterError unless pinned."""
    der = connection.getpeercert(binary_form=True)
    if not der:
        raise ClusterError("the cluster peer presented no certificate")
    found = fingerprint(der)
    if found not in pins:
        raise ClusterError(f"the cluster peer's certificate {found} is not pinned")
    return found


PEERS_DIR = "peers"  # beside the key: the peers' certificates, exchanged by hand, named by fingerprint


def load_pins(directory: Path, fingerprints: Iterable[str]) -> Pins:
    """The certificates ``fingerprints`` pin (the ``cluster.certificates`` setting), read from
    ``directory``, where `anticloud cluster trust` put each as ``<hex>.crt``; ClusterError if
    one is missing or is not the certificate its name says."""
    expected: dict[str, str | bytes] = {}
    for pinned in fingerprints:
        path = directory / f"{pinned.removeprefix('sha256:')}.crt"
        try:
            expected[pinned] = path.read_bytes()
        except OSError as exc:
            raise ClusterError(f"the pinned certificate {pinned} cannot be read ({exc.strerror}): "
                               "run `anticloud cluster trust` with the peer's certificate") from None
    return Pins.expecting(expected)

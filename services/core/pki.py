"""A local certificate authority for the secure stack (``make up SECURE=1``), made with
the ``cryptography`` library: no openssl or cfssl to install.

    pki = Pki(Path(".data/pki"))
    pki.ensure(members=["etcd1", "etcd2", "etcd3"], clients=IDENTITIES)
    pki.paths("gitops-sync")  # → (ca.crt, gitops-sync.crt, gitops-sync.key)

Files: ``ca.crt``/``ca.key`` and ``NAME.crt``/``NAME.key`` per member and per client
identity. Made once and kept: ``ensure`` issues only what is missing or expires within
``RENEW_BEFORE`` (a renewed file is picked up by the programs without a restart). A
client certificate's common name is its etcd user (etcd's ``--client-cert-auth``), so
no password and no token that could expire. Keys are ECDSA P-256, written 0600.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from collections.abc import Iterable
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from services.core.roles import IDENTITIES

__all__ = ["IDENTITIES", "Pki"]
CA_DAYS = 3650
LEAF_DAYS = 365
RENEW_BEFORE = dt.timedelta(days=30)
LOCAL_HOSTS = ("127.0.0.1", "localhost")


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    data = key.private_bytes(serialization.Encoding.PEM,
                             serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    tmp.replace(path)


def _write_cert(path: Path, cert: x509.Certificate) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    tmp.replace(path)  # atomic: a program reloading it never reads half a file


def _san(hosts: Iterable[str]) -> x509.SubjectAlternativeName:
    names: list[x509.GeneralName] = []
    for host in dict.fromkeys(hosts):
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return x509.SubjectAlternativeName(names)


class Pki:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.ca_cert = self.root / "ca.crt"
        self.ca_key = self.root / "ca.key"

    def paths(self, name: str) -> tuple[Path, Path, Path]:
        """(CA bundle, certificate, key) for ``name``: etcdctl's --cacert/--cert/--key."""
        return self.ca_cert, self.root / f"{name}.crt", self.root / f"{name}.key"

    def ensure(self, *, members: Iterable[str] = (), clients: Iterable[str] = IDENTITIES,
               hosts: Iterable[str] = LOCAL_HOSTS) -> list[str]:
        """Make what is missing or about to expire; returns the names (re)issued."""
        self.root.mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, 0o700)
        made = []
        if not self.ca_cert.exists() or not self.ca_key.exists():
            self._make_ca()
            made.append("ca")
        for member in members:
            if "ca" in made or self._due(member):
                self.issue(member, hosts=[*hosts, member], server=True)
                made.append(member)
        for client in clients:
            if "ca" in made or self._due(client):
                self.issue(client)
                made.append(client)
        return made

    def _due(self, name: str) -> bool:
        _, crt, key = self.paths(name)
        if not crt.exists() or not key.exists():
            return True
        cert = x509.load_pem_x509_certificate(crt.read_bytes())
        return cert.not_valid_after_utc - _now() < RENEW_BEFORE

    def _make_ca(self) -> None:
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "chora registry local CA")])
        now = _now()
        cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
                .public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - dt.timedelta(minutes=5))
                .not_valid_after(now + dt.timedelta(days=CA_DAYS))
                .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                .add_extension(x509.KeyUsage(
                    digital_signature=True, key_cert_sign=True, crl_sign=True,
                    content_commitment=False, key_encipherment=False, data_encipherment=False,
                    key_agreement=False, encipher_only=False, decipher_only=False),
                    critical=True)
                .sign(key, hashes.SHA256()))
        _write_key(self.ca_key, key)
        _write_cert(self.ca_cert, cert)

    def issue(self, name: str, *, hosts: Iterable[str] = LOCAL_HOSTS, server: bool = False,
              days: int = LEAF_DAYS) -> None:
        """A certificate for ``name`` (its common name) signed by the CA. Members get
        server and client use (peer traffic is both); identities client use only."""
        ca_key = serialization.load_pem_private_key(self.ca_key.read_bytes(), None)
        ca_cert = x509.load_pem_x509_certificate(self.ca_cert.read_bytes())
        assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
        key = ec.generate_private_key(ec.SECP256R1())
        now = _now()
        usages = [ExtendedKeyUsageOID.CLIENT_AUTH]
        if server:
            usages.append(ExtendedKeyUsageOID.SERVER_AUTH)
        builder = (x509.CertificateBuilder()
                   .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
                   .issuer_name(ca_cert.subject).public_key(key.public_key())
                   .serial_number(x509.random_serial_number())
                   .not_valid_before(now - dt.timedelta(minutes=5))
                   .not_valid_after(now + dt.timedelta(days=days))
                   .add_extension(x509.BasicConstraints(ca=False, path_length=None),
                                  critical=True)
                   .add_extension(x509.ExtendedKeyUsage(usages), critical=False))
        if server:
            builder = builder.add_extension(_san(hosts), critical=False)
        _, crt, key_path = self.paths(name)
        _write_key(key_path, key)
        _write_cert(crt, builder.sign(ca_key, hashes.SHA256()))


def main(argv: list[str] | None = None) -> int:
    """``python -m services.core.pki [--dir .data/pki] issue NAME [--days N]``: a new key
    and certificate for NAME (a rotation, or a new consumer's identity), written
    atomically where the programs read them; ``ensure`` makes whatever is missing."""
    import argparse

    from services.core import topology

    p = argparse.ArgumentParser(prog="python -m services.core.pki", description=main.__doc__)
    p.add_argument("--dir", type=Path, default=Path(".data/pki"),
                   help="the PKI directory (default %(default)s)")
    sub = p.add_subparsers(dest="command", required=True)
    issue = sub.add_parser("issue", help="(re)issue NAME's key and certificate")
    issue.add_argument("name", help="the common name: the etcd user, or a member's name")
    issue.add_argument("--days", type=int, default=LEAF_DAYS,
                       help="validity in days (default %(default)s)")
    sub.add_parser("ensure", help="make the CA, the members' and identities' certificates "
                                  "that are missing or expire within 30 days")
    args = p.parse_args(argv)
    pki = Pki(args.dir)
    members = [m.name for m in topology.MEMBERS]
    if args.command == "ensure":
        made = pki.ensure(members=members)
        print(f"{pki.root}: " + (f"made {', '.join(made)}" if made else "nothing to do"))
        return 0
    if not pki.ca_key.exists():
        p.error(f"no CA in {pki.root}: run `make certs` (or the ensure command) first")
    if args.name in members:
        pki.issue(args.name, hosts=[*LOCAL_HOSTS, args.name], server=True, days=args.days)
    else:
        pki.issue(args.name, days=args.days)
    _, crt, key = pki.paths(args.name)
    print(f"issued {crt} and {key} (valid {args.days} days)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

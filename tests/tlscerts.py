"""
Certificates made in the test: a CA, a broker certificate for 127.0.0.1
and localhost, and client certificates by common name, written as PEM files
with the C{cryptography} package.
"""

import datetime
import ipaddress
import os

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


def _name(commonName):
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, commonName)])


def _write(path, *pems):
    with open(path, "wb") as f:
        f.write(b"".join(pems))
    return path


class CertificateAuthority:
    """
    A CA in C{directory}: C{ca.pem}, and the certificates it issues.
    """

    def __init__(self, directory, name="metaq test CA"):
        os.makedirs(directory, exist_ok=True)
        self.directory = directory
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.name = _name(name)
        now = datetime.datetime.now(datetime.UTC)
        self.certificate = (
            x509.CertificateBuilder()
            .subject_name(self.name)
            .issuer_name(self.name)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self.key, hashes.SHA256())
        )
        self.caPath = _write(os.path.join(directory, "ca.pem"),
                             self.certificate.public_bytes(serialization.Encoding.PEM))

    def issue(self, commonName, hosts=()):
        """
        A key and certificate for C{commonName} (with C{hosts}, IP addresses
        or DNS names, as subject alternative names).

        @return: C{(certificatePath, keyPath)}.
        """
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(commonName))
            .issuer_name(self.name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
        )
        if hosts:
            names = []
            for host in hosts:
                try:
                    names.append(x509.IPAddress(ipaddress.ip_address(host)))
                except ValueError:
                    names.append(x509.DNSName(host))
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        certificate = builder.sign(self.key, hashes.SHA256())
        base = os.path.join(self.directory, commonName)
        certificatePath = _write(base + ".crt",
                                 certificate.public_bytes(serialization.Encoding.PEM))
        keyPath = _write(base + ".key", key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption()))
        return certificatePath, keyPath

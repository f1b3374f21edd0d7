"""
TLS settings shared by the broker's listeners and every client side (the
Python client, the replication links, the tools): loading PEM files into
Twisted's C{twisted.internet.ssl} objects. No cryptography of our own: the
handshake, verification and host-name checks are pyOpenSSL's and
service_identity's, through Twisted.
"""

import re
from dataclasses import dataclass

from twisted.internet import ssl
from twisted.internet.endpoints import wrapClientTLS

_PEM_CERTIFICATE = re.compile(
    rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.DOTALL
)


def readFile(path):
    with open(path, "rb") as f:
        return f.read()


def loadCertificates(path):
    """
    Every certificate of a PEM file (a CA bundle holds several).

    @raise ValueError: the file holds none.
    """
    blocks = _PEM_CERTIFICATE.findall(readFile(path))
    if not blocks:
        raise ValueError(f"{path}: no PEM certificate in it")
    return [ssl.Certificate.loadPEM(block) for block in blocks]


def trustRootFrom(path):
    """
    The trust root made of the certificates of the PEM file at C{path}.
    """
    return ssl.trustRootFromCertificates(loadCertificates(path))


def loadPrivateCertificate(certificatePath, keyPath=None):
    """
    The certificate and its key, from one PEM file or two.
    """
    data = readFile(certificatePath)
    if keyPath is not None and keyPath != certificatePath:
        data += b"\n" + readFile(keyPath)
    return ssl.PrivateCertificate.loadPEM(data)


@dataclass(frozen=True)
class ClientTLS:
    """
    How a client connects to brokers over TLS.

    @ivar caCerts: PEM file of the certificates to trust for the broker
        (L{None}: the platform's trust store).
    @ivar certificate: PEM file of this client's certificate (and key, if
        C{privateKey} is not given), for brokers that require one.
    @ivar privateKey: PEM file of its key.
    @ivar hostname: the name the broker's certificate must carry (default:
        the host of the address connected to).
    """

    caCerts: str | None = None
    certificate: str | None = None
    privateKey: str | None = None
    hostname: str | None = None

    def creatorFor(self, host):
        """
        The L{twisted.internet.interfaces.IOpenSSLClientConnectionCreator}
        for a connection to C{host}.
        """
        trustRoot = None if self.caCerts is None else trustRootFrom(self.caCerts)
        clientCertificate = None
        if self.certificate is not None:
            clientCertificate = loadPrivateCertificate(self.certificate, self.privateKey)
        return ssl.optionsForClientTLS(
            self.hostname or host, trustRoot=trustRoot, clientCertificate=clientCertificate
        )

    def wrap(self, endpoint, host):
        """
        C{endpoint} (a TCP client endpoint to C{host}) with TLS on top.
        """
        return wrapClientTLS(self.creatorFor(host), endpoint)

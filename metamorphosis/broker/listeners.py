"""
The broker's listeners: several Twisted server endpoint strings at once,
from the C{[listeners]} section of C{server.ini} or C{twistd metaq --listen}.

Any endpoint string Twisted knows works (C{tcp:}, C{tcp6:}, C{unix:},
C{ssl:}); this module adds C{mtls:}, an C{ssl:} endpoint that also requires
and verifies client certificates against a CA file (Twisted's C{ssl:}
cannot), so that access rules can name certificates.

In ZooKeeper the first plain listener is the broker's address (C{master} or
C{slave<n>}, what Java clients read) and the first TLS listener, if any, is
registered beside it in C{tls-master} or C{tls-slave<n>}.
"""

from dataclasses import dataclass

from twisted.internet import endpoints, interfaces, ssl
from twisted.plugin import IPlugin
from zope.interface import implementer

from metamorphosis.tls import loadCertificates, loadPrivateCertificate, trustRootFrom

#: Endpoint types whose connections are TLS.
TLS_TYPES = frozenset(["ssl", "mtls"])


class ListenerError(ValueError):
    """
    A listener that cannot be built; the message names it and says why.
    """


@dataclass(frozen=True)
class Listener:
    """
    One listener: its name (the C{[listeners]} key), its endpoint string
    and the endpoint made of it.
    """

    name: str
    description: str
    endpoint: object

    @property
    def tls(self):
        return isTLS(self.description)


def isTLS(description):
    """
    Whether the endpoint string C{description} makes TLS connections.
    """
    return description.split(":", 1)[0].strip().lower() in TLS_TYPES


def buildListeners(reactor, descriptions):
    """
    The L{Listener}s of C{(name, endpoint string)} pairs.

    @raise ListenerError: an endpoint string Twisted refuses, or whose key
        or certificate files cannot be loaded.
    """
    listeners = []
    for name, description in descriptions:
        try:
            endpoint = endpoints.serverFromString(reactor, description)
        except Exception as e:
            raise ListenerError(f"listener {name} ({description}): {e}") from e
        listeners.append(Listener(name, description, endpoint))
    return listeners


def plainAndTLS(listeners):
    """
    The first plain and the first TLS listener (either may be L{None}):
    the two addresses registered in ZooKeeper.
    """
    plain = next((listener for listener in listeners if not listener.tls), None)
    tls = next((listener for listener in listeners if listener.tls), None)
    return plain, tls


@implementer(IPlugin, interfaces.IStreamServerEndpointStringParser)
class MutualTLSServerParser:
    """
    C{mtls:PORT:privateKey=KEY.pem:certKey=CERT.pem:caCerts=CA.pem}: a TLS
    listener that requires a client certificate signed by one of the
    certificates in C{caCerts}. Also C{interface}, C{backlog} and
    C{extraCertChain} (intermediate certificates to send), as for C{ssl:}.
    """

    prefix = "mtls"

    def parseStreamServer(self, reactor, port, privateKey="server.pem", certKey=None,
                          caCerts=None, interface="", backlog=50, extraCertChain=None):
        if caCerts is None:
            raise ValueError("mtls: needs caCerts=<PEM file of the CAs of client certificates>")
        certificate = loadPrivateCertificate(certKey or privateKey, privateKey)
        chain = None
        if extraCertChain is not None:
            chain = [c.original for c in loadCertificates(extraCertChain)]
        options = ssl.CertificateOptions(
            privateKey=certificate.privateKey.original,
            certificate=certificate.original,
            extraCertChain=chain,
            trustRoot=trustRootFrom(caCerts),
        )
        return endpoints.SSL4ServerEndpoint(
            reactor, int(port), options, backlog=int(backlog), interface=interface
        )

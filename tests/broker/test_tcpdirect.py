"""
Tests for L{metamorphosis.broker.tcpdirect}: the private attributes of
Twisted's TCP transport it relies on.  When a Twisted upgrade renames or
changes them, these tests fail and say so, instead of the broker writing
replies out of order.
"""

from twisted.internet import protocol, reactor, tcp
from twisted.internet.defer import Deferred
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase, TestCase

from metamorphosis.broker import tcpdirect
from tests.waiting import waitFor


class AttributeTests(SynchronousTestCase):
    def test_notTcp(self):
        """
        Transports other than plain TCP have no direct socket.
        """
        self.assertIsNone(tcpdirect.directSocket(StringTransport()))


class Recorder(protocol.Protocol):
    def __init__(self):
        self.received = bytearray()
        self.made = Deferred()

    def connectionMade(self):
        self.made.callback(self)

    def dataReceived(self, data):
        self.received += data


class ConnectionTests(TestCase):
    """
    The adapter on a real loopback connection.
    """

    async def connect(self):
        serverFactory = protocol.Factory.forProtocol(Recorder)
        servers = []

        def build(addr):
            proto = Recorder()
            servers.append(proto)
            return proto

        serverFactory.buildProtocol = build
        port = reactor.listenTCP(0, serverFactory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        client = Recorder()
        connector = protocol.ClientCreator(reactor, lambda: client)
        await connector.connectTCP("127.0.0.1", port.getHost().port)
        await waitFor(lambda: servers, what="accepted")
        server = servers[0]
        self.addCleanup(client.transport.loseConnection)
        self.addCleanup(server.transport.loseConnection)
        return server, client

    async def test_privateAttributesExist(self):
        """
        Every private attribute the adapter touches is still there on a
        connected TCP transport.
        """
        server, _ = await self.connect()
        for name in tcpdirect.PRIVATE_ATTRIBUTES:
            self.assertTrue(
                hasattr(server.transport, name),
                f"Twisted's TCP transport has no {name!r} any more: "
                "update metamorphosis/broker/tcpdirect.py for this Twisted",
            )

    async def test_directWriteInOrder(self):
        """
        An idle transport is seen idle and a direct write goes out at
        once; while the transport buffers (the peer does not read), it is
        seen busy and writes go behind its buffer, so the peer receives
        every byte in order.
        """
        server, client = await self.connect()
        transport = server.transport
        self.assertIsInstance(transport, tcp.Connection)
        self.assertIs(tcpdirect.directSocket(transport), transport.socket)
        self.assertTrue(tcpdirect.isIdle(transport))
        tcpdirect.writeNow(transport, b"first")
        self.assertTrue(tcpdirect.isIdle(transport))
        await waitFor(lambda: bytes(client.received) == b"first", what="direct write")
        # Fill the socket: the client stops reading.
        client.transport.pauseProducing()
        big = bytes(range(256)) * 4096 * 16
        transport.write(big)
        self.assertFalse(tcpdirect.isIdle(transport),
                         "a transport holding 16 MiB unsent is seen idle: Twisted's "
                         "write buffer attributes changed; update tcpdirect.py")
        tcpdirect.writeNow(transport, b"last")
        client.transport.resumeProducing()
        expected = b"first" + big + b"last"
        await waitFor(lambda: len(client.received) >= len(expected), what="all bytes")
        self.assertEqual(bytes(client.received), expected)
        await waitFor(lambda: tcpdirect.isIdle(transport), what="drained")

    async def test_awaitWritable(self):
        """
        After L{tcpdirect.awaitWritable}, a paused streaming producer is
        resumed by the transport once it can write.
        """
        server, _ = await self.connect()
        transport = server.transport
        resumed = []

        class Producer:
            def resumeProducing(self):
                resumed.append(True)

            def pauseProducing(self):
                pass

            def stopProducing(self):
                pass

        transport.registerProducer(Producer(), True)
        self.addCleanup(transport.unregisterProducer)
        tcpdirect.awaitWritable(transport)
        await waitFor(lambda: resumed, what="producer resumed")

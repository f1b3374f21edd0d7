"""
Tests for L{metamorphosis.ha.link}: requests matched to replies by opaque,
timeouts, connection loss, and the self-healing link over real sockets.
"""

from twisted.internet import defer, error, protocol, reactor
from twisted.internet.task import Clock, deferLater
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase, TestCase

from metamorphosis.ha.link import NotConnected, OpaqueGenerator, PeerLink, RequestProtocol, RequestTimeout
from metamorphosis.protocol.commands import CommandParser, ResultCommand, SyncCommand, ValueCommand


class OpaqueGeneratorTests(SynchronousTestCase):
    def test_javaSequence(self):
        """
        Opaques start at C{Integer.MIN_VALUE} and wrap at C{Integer.MAX_VALUE}.
        """
        opaques = OpaqueGenerator()
        self.assertEqual([opaques.next() for _ in range(3)], [-(2**31), -(2**31) + 1, -(2**31) + 2])
        opaques._next = 2**31 - 1
        self.assertEqual([opaques.next(), opaques.next()], [2**31 - 1, -(2**31)])


class RequestProtocolTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.lost = []
        self.made = []
        self.proto = RequestProtocol(self.clock, self.made.append, self.lost.append)
        self.transport = StringTransport()
        self.proto.makeConnection(self.transport)

    def sync(self, opaque):
        return SyncCommand("t", 0, b"body", 0, -5, opaque, 12)

    def test_connectionMade(self):
        self.assertEqual(self.made, [self.proto])

    def test_sendsEncodedCommand(self):
        self.proto.request(self.sync(7), 1)
        self.assertEqual(self.transport.value(), b"sync t 0 4 0 -5 12 7\r\nbody")

    def test_repliesMatchedByOpaque(self):
        """
        Replies may come in any order, in any chunking; each fires the
        request with its opaque.
        """
        first = self.proto.request(self.sync(1), 1)
        second = self.proto.request(self.sync(2), 1)
        data = ValueCommand(b"xyz", 2).encode() + ResultCommand(200, b"1 0 0", 1).encode()
        for i in range(len(data)):
            self.proto.dataReceived(data[i : i + 1])
        self.assertEqual(self.successResultOf(first), ResultCommand(200, b"1 0 0", 1))
        self.assertEqual(self.successResultOf(second), ValueCommand(b"xyz", 2))
        # No request timer is left, only the heartbeat.
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)

    def test_strayReplyIgnored(self):
        pending = self.proto.request(self.sync(1), 1)
        self.proto.dataReceived(ResultCommand(200, b"", 99).encode())
        self.assertNoResult(pending)

    def test_timeout(self):
        pending = self.proto.request(self.sync(1), 2.0)
        self.clock.advance(1.9)
        self.assertNoResult(pending)
        self.clock.advance(0.1)
        self.failureResultOf(pending, RequestTimeout)
        # A late reply is ignored.
        self.proto.dataReceived(ResultCommand(200, b"", 1).encode())

    def test_connectionLost(self):
        pending = self.proto.request(self.sync(1), 2.0)
        self.proto.connectionLost(error.ConnectionLost())
        self.failureResultOf(pending, error.ConnectionLost)
        self.assertEqual(self.lost, [self.proto])
        # No request timer, no heartbeat left.
        self.assertFalse(self.clock.getDelayedCalls())

    def test_consecutiveTimeoutsDropConnection(self):
        """
        A peer that stops answering is dropped after three timeouts in a
        row; a reply in between resets the count.
        """
        for opaque in (1, 2):
            self.proto.request(self.sync(opaque), 1).addErrback(lambda f: None)
        self.clock.advance(1)
        self.proto.request(self.sync(3), 1)
        self.proto.dataReceived(ResultCommand(200, b"", 3).encode())
        for opaque in (4, 5):
            self.proto.request(self.sync(opaque), 1).addErrback(lambda f: None)
        self.clock.advance(1)
        self.assertFalse(self.transport.disconnecting)
        self.proto.request(self.sync(6), 1).addErrback(lambda f: None)
        self.clock.advance(1)
        self.assertTrue(self.transport.disconnecting)

    def test_heartbeat(self):
        """
        After 10 s without traffic the link sends C{version}; traffic
        postpones it.
        """
        self.clock.advance(6)
        self.proto.dataReceived(ResultCommand(200, b"", 99).encode())
        self.clock.advance(5)
        self.assertEqual(self.transport.value(), b"")
        self.clock.advance(5)
        self.assertEqual(self.transport.value(), b"version -2147483648\r\n")
        self.transport.clear()
        self.proto.dataReceived(ResultCommand(200, b"1.4.6.2", -(2**31)).encode())
        self.clock.advance(5)
        self.assertEqual(self.transport.value(), b"")
        self.clock.advance(5)
        self.assertEqual(self.transport.value(), b"version -2147483647\r\n")

    def test_malformedReply(self):
        """
        A reply that cannot be parsed drops the connection.
        """
        self.proto.dataReceived(b"bogus\r\n")
        self.assertTrue(self.transport.disconnecting)


class _Echo(protocol.Protocol):
    """
    A peer answering every command with C{result 200} and the command's
    topic, remembering the connections it had.
    """

    def connectionMade(self):
        self.parser = CommandParser()
        self.factory.connections.append(self)

    def dataReceived(self, data):
        for command in self.parser.feed(data):
            self.transport.write(ResultCommand(200, command.topic.encode(), command.opaque).encode())


class PeerLinkTests(TestCase):
    def setUp(self):
        self.factory = protocol.ServerFactory.forProtocol(_Echo)
        self.factory.connections = []
        self.port = reactor.listenTCP(0, self.factory, interface="127.0.0.1")
        self.addCleanup(self.port.stopListening)
        self.link = PeerLink(reactor, "127.0.0.1", self.port.getHost().port, retryIntervalSeconds=0.05)
        self.addCleanup(self.link.stop)

    def test_notConnected(self):
        self.assertFalse(self.link.connected)
        self.failureResultOf(self.link.request(lambda opaque: SyncCommand("t", 0, b"", 0, 1, opaque), 1), NotConnected)

    @defer.inlineCallbacks
    def test_requestAndHeal(self):
        """
        The link connects, carries requests, and after the peer drops the
        connection it connects again by itself.
        """
        self.assertEqual(self.link.url, "meta://127.0.0.1:%d" % (self.port.getHost().port,))
        self.link.start()
        yield self.link.whenConnected()
        self.assertTrue(self.link.connected)
        reply = yield self.link.request(lambda opaque: SyncCommand("topic-a", 0, b"x", 0, 1, opaque), 5)
        self.assertEqual((reply.code, reply.body), (200, b"topic-a"))
        self.factory.connections[0].transport.loseConnection()
        for _ in range(500):
            if not self.link.connected:
                break
            yield deferLater(reactor, 0.01, lambda: None)
        self.failureResultOf(self.link.request(lambda opaque: SyncCommand("t", 0, b"", 0, 1, opaque), 1), NotConnected)
        for _ in range(500):
            if len(self.factory.connections) == 2 and self.link.connected:
                break
            yield deferLater(reactor, 0.01, lambda: None)
        reply = yield self.link.request(lambda opaque: SyncCommand("topic-b", 0, b"x", 0, 1, opaque), 5)
        self.assertEqual(reply.body, b"topic-b")


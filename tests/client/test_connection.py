"""
Tests for L{metamorphosis.client.connection}: the client protocol on a
L{StringTransport} with a L{Clock}, and L{BrokerConnection} /
L{ConnectionPool} against real loopback servers.
"""

from twisted.internet import defer, reactor
from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock, deferLater
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase

from metamorphosis.client.connection import (
    INT_MAX,
    INT_MIN,
    BrokerConnection,
    ConnectionPool,
    MetaClientProtocol,
    OpaqueGenerator,
    parseBrokerUrl,
)
from metamorphosis.client.errors import MetaConnectionError, MetaTimeoutError
from metamorphosis.protocol.commands import ResultCommand, ValueCommand
from tests.waiting import waitFor


class OpaqueGeneratorTests(SynchronousTestCase):
    def test_startsAtIntMin(self):
        """
        Opaques count up from -2147483648, as gecko's do.
        """
        opaques = OpaqueGenerator()
        self.assertEqual([opaques() for _ in range(3)], [INT_MIN, INT_MIN + 1, INT_MIN + 2])

    def test_wraps(self):
        """
        The last opaque handed out is 2147483647 - 11; then the counter
        starts over, so the broker's default 2147483647 is never used.
        """
        opaques = OpaqueGenerator(INT_MAX - 12)
        self.assertEqual([opaques() for _ in range(3)], [INT_MAX - 12, INT_MAX - 11, INT_MIN])


class ParseBrokerUrlTests(SynchronousTestCase):
    def test_hostAndPort(self):
        self.assertEqual(parseBrokerUrl("meta://10.0.0.5:8123"), ("10.0.0.5", 8123))

    def test_ipv6(self):
        self.assertEqual(parseBrokerUrl("meta://[::1]:8123"), ("::1", 8123))

    def test_bad(self):
        for url in ("http://host:1", "meta://host", "host:8123", ""):
            self.assertRaises(ValueError, parseBrokerUrl, url)


def connectedProtocol(**attributes):
    clock = Clock()
    protocol = MetaClientProtocol(clock, OpaqueGenerator())
    for name, value in attributes.items():
        setattr(protocol, name, value)
    transport = StringTransport()
    protocol.makeConnection(transport)
    return clock, protocol, transport


class ProtocolTests(SynchronousTestCase):
    def test_putBytes(self):
        """
        A put is written as the 1.4.4+ Java producer writes it: seven tokens
        with the checksum, then the body (docs/protocol.md).
        """
        clock, protocol, transport = connectedProtocol()
        protocol.put("test", 0, b"hello", 0, 907060870)
        self.assertEqual(transport.value(), b"put test 0 5 0 907060870 -2147483648\r\nhello")

    def test_repliesByOpaque(self):
        """
        Replies are matched to requests by opaque, whatever their order.
        """
        clock, protocol, transport = connectedProtocol()
        first = protocol.put("test", 0, b"a", 0, 1)
        second = protocol.get("test", "g", 0, 0, 1024)
        protocol.dataReceived(
            ValueCommand(b"xyz", INT_MIN + 1).encode()
            + ResultCommand(200, b"-5 0 0", INT_MIN).encode()
        )
        self.assertEqual(self.successResultOf(first), ResultCommand(200, b"-5 0 0", INT_MIN))
        self.assertEqual(self.successResultOf(second), ValueCommand(b"xyz", INT_MIN + 1))
        self.assertEqual(protocol._pending, {})

    def test_repliesAcrossChunks(self):
        """
        A reply split over many reads still completes its request.
        """
        clock, protocol, transport = connectedProtocol()
        d = protocol.version()
        for byte in ResultCommand(200, b"1.4.6.2", INT_MIN).encode():
            protocol.dataReceived(bytes([byte]))
        self.assertEqual(self.successResultOf(d).body, b"1.4.6.2")

    def test_timeout(self):
        """
        A request with no reply within its timeout fails with
        MetaTimeoutError; a late reply is dropped.
        """
        clock, protocol, transport = connectedProtocol()
        d = protocol.put("test", 0, b"a", 0, 1, timeout=3.0)
        clock.advance(2.9)
        self.assertNoResult(d)
        clock.advance(0.2)
        failure = self.failureResultOf(d, MetaTimeoutError)
        self.assertIn("3000 ms", str(failure.value))
        protocol.dataReceived(ResultCommand(200, b"1 0 0", INT_MIN).encode())
        self.assertEqual(protocol._pending, {})
        self.assertFalse(transport.disconnecting)

    def test_replyCancelsTimeout(self):
        clock, protocol, transport = connectedProtocol()
        d = protocol.put("test", 0, b"a", 0, 1, timeout=3.0)
        protocol.dataReceived(ResultCommand(200, b"1 0 0", INT_MIN).encode())
        self.successResultOf(d)
        self.assertEqual(clock.getDelayedCalls(), [protocol._idleCall])

    def test_unexpectedReplyDropped(self):
        """
        A reply nobody waits for is dropped, as gecko does.
        """
        clock, protocol, transport = connectedProtocol()
        d = protocol.version()
        protocol.dataReceived(ResultCommand(200, b"x", 12345).encode())
        self.assertNoResult(d)
        self.assertFalse(transport.disconnecting)

    def test_connectionLostFailsAll(self):
        """
        Losing the connection fails every pending request with
        MetaConnectionError and cancels their timeouts.
        """
        clock, protocol, transport = connectedProtocol()
        requests = [protocol.put("t", 0, b"a", 0, 1), protocol.get("t", "g", 0, 0, 10), protocol.version()]
        protocol.connectionLost(Failure(ConnectionDone()))
        for d in requests:
            self.failureResultOf(d, MetaConnectionError)
        self.assertEqual(clock.getDelayedCalls(), [])
        self.failureResultOf(protocol.version(), MetaConnectionError)

    def test_malformedReply(self):
        """
        Bytes that are no MetaQ reply close the connection; pending requests
        then fail with MetaConnectionError.
        """
        clock, protocol, transport = connectedProtocol()
        d = protocol.version()
        protocol.dataReceived(b"hello there\r\n")
        self.assertTrue(transport.disconnecting)
        self.assertNoResult(d)
        protocol.connectionLost(Failure(ConnectionDone()))
        self.failureResultOf(d, MetaConnectionError)

    def test_cancel(self):
        """
        Cancelling a request forgets it.
        """
        clock, protocol, transport = connectedProtocol()
        d = protocol.version()
        d.cancel()
        self.failureResultOf(d, defer.CancelledError)
        self.assertEqual(protocol._pending, {})

    def test_heartbeatWhenIdle(self):
        """
        After 10 s without reads or writes the client sends C{version} with a
        fresh opaque; traffic postpones it.
        """
        clock, protocol, transport = connectedProtocol()
        clock.advance(6)
        protocol.put("t", 0, b"a", 0, 1)
        protocol.dataReceived(ResultCommand(200, b"1 0 0", INT_MIN).encode())
        transport.clear()
        clock.advance(9.9)
        self.assertEqual(transport.value(), b"")
        clock.advance(0.2)
        self.assertEqual(transport.value(), b"version -2147483647\r\n")

    def test_heartbeatFailuresClose(self):
        """
        Heartbeats go out every 10 s while nothing else happens; three in a
        row without a reply (5 s each) close the connection, and an answered
        one in between resets the count.
        """
        clock, protocol, transport = connectedProtocol()

        def advanceTo(when):
            while clock.seconds() < when:
                clock.advance(0.5)

        advanceTo(10)  # heartbeat 1 ...
        advanceTo(15)  # ... times out
        self.assertEqual(protocol._heartbeatFailures, 1)
        advanceTo(20)  # heartbeat 2, answered
        opaque = int(transport.value().split(b"\r\n")[-2].split()[1])
        protocol.dataReceived(ResultCommand(200, b"1.4.6.2", opaque).encode())
        self.assertEqual(protocol._heartbeatFailures, 0)
        advanceTo(45)  # heartbeats at 30 and 40 time out at 35 and 45
        self.assertEqual(transport.value().count(b"version"), 4)
        self.assertEqual(protocol._heartbeatFailures, 2)
        advanceTo(54.5)
        self.assertFalse(transport.disconnecting)
        advanceTo(55)  # the one sent at 50 times out: the third in a row
        self.assertEqual(protocol._heartbeatFailures, 3)
        self.assertTrue(transport.disconnecting)

    def test_heartbeatErrorStatusCounts(self):
        """
        A non-200 answer to a heartbeat counts as a failure.
        """
        clock, protocol, transport = connectedProtocol()
        clock.advance(10)
        opaque = int(transport.value().split()[1])
        protocol.dataReceived(ResultCommand(503, b"busy", opaque).encode())
        self.assertEqual(protocol._heartbeatFailures, 1)

    def test_noHeartbeatWhenDisabled(self):
        clock, protocol, transport = connectedProtocol(heartbeatInterval=0)
        clock.advance(100)
        self.assertEqual(transport.value(), b"")


class _Broker(Protocol):
    """
    A fake broker answering every put with a fixed result and counting
    connections.
    """

    def connectionMade(self):
        self.factory.connections.append(self)

    def dataReceived(self, data):
        for line in data.split(b"\r\n"):
            words = line.split()
            if words and words[0] in (b"put", b"version"):
                reply = ResultCommand(200, b"1 0 0", int(words[-1])).encode()
                self.transport.write(reply)


class _BrokerFactory(Factory):
    protocol = _Broker

    def __init__(self):
        self.connections = []


class BrokerConnectionTests(TestCase):
    def listen(self, port=0):
        factory = _BrokerFactory()
        listening = reactor.listenTCP(port, factory, interface="127.0.0.1")
        self.addCleanup(listening.stopListening)
        return factory, listening

    @defer.inlineCallbacks
    def test_requestWaitsForConnection(self):
        """
        A request made before the connection is up is sent once it is.
        """
        factory, port = self.listen()
        connection = BrokerConnection("meta://127.0.0.1:%d" % port.getHost().port, reactor)
        self.addCleanup(connection.stop)
        reply = yield connection.request("put", "t", 0, b"a", 0, 1, timeout=5)
        self.assertEqual(reply.code, 200)
        self.assertTrue(connection.connected)

    @defer.inlineCallbacks
    def test_reconnects(self):
        """
        After the broker goes away and comes back on the same port, the
        connection is re-established within the reconnect interval.
        """
        factory, port = self.listen()
        portNumber = port.getHost().port
        connection = BrokerConnection(
            "meta://127.0.0.1:%d" % portNumber, reactor, reconnectInterval=0.1
        )
        self.addCleanup(connection.stop)
        yield connection.whenConnected(5)
        yield port.stopListening()
        factory.connections[0].transport.loseConnection()
        yield deferLater(reactor, 0.05, lambda: None)
        self.assertFalse(connection.connected)
        factory2, port2 = self.listen(portNumber)
        reply = yield connection.request("version", timeout=5)
        self.assertEqual(reply.code, 200)
        self.assertEqual(len(factory2.connections), 1)

    @defer.inlineCallbacks
    def test_noConnection(self):
        """
        A request to a broker that does not answer fails with a clear
        MetaConnectionError after its timeout.
        """
        factory, port = self.listen()
        url = "meta://127.0.0.1:%d" % port.getHost().port
        yield port.stopListening()
        connection = BrokerConnection(url, reactor, reconnectInterval=0.05)
        self.addCleanup(connection.stop)
        error = yield self.assertFailure(
            connection.request("version", timeout=0.3), MetaConnectionError
        )
        self.assertIn(url, str(error))

    @defer.inlineCallbacks
    def test_givesUp(self):
        """
        After maxReconnectAttempts failures in a row it stops trying; a new
        request starts again.
        """
        factory, port = self.listen()
        portNumber = port.getHost().port
        yield port.stopListening()
        connection = BrokerConnection(
            "meta://127.0.0.1:%d" % portNumber, reactor, reconnectInterval=0.01, maxReconnectAttempts=3
        )
        self.addCleanup(connection.stop)
        connection.start()
        yield waitFor(lambda: not connection._service.running, what="giving up")
        self.assertFalse(connection._service.running)
        self.listen(portNumber)
        reply = yield connection.request("version", timeout=5)
        self.assertEqual(reply.code, 200)


class ConnectionPoolTests(TestCase):
    @defer.inlineCallbacks
    def test_sharedAndCounted(self):
        """
        One connection per URL, closed with its last reference.
        """
        factory = _BrokerFactory()
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        url = "meta://127.0.0.1:%d" % port.getHost().port
        pool = ConnectionPool(reactor)
        self.addCleanup(pool.close)
        a = pool.acquire(url, "a")
        b = pool.acquire(url, "b")
        self.assertIs(a, b)
        yield a.whenConnected(5)
        self.assertEqual(len(factory.connections), 1)
        yield pool.release(url, "a")
        self.assertIs(pool.get(url), a)
        self.assertTrue(a.connected)
        yield pool.release(url, "b")
        self.assertIsNone(pool.get(url))
        self.assertFalse(a.connected)

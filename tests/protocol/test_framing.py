"""
Tests for L{metamorphosis.protocol.framing}.
"""

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import defer, protocol, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.testing import StringTransport
from twisted.logger import capturedLogs
from twisted.trial.unittest import SynchronousTestCase, TestCase

from metamorphosis.protocol.commands import (
    CommandParser,
    GetCommand,
    PutCommand,
    QuitCommand,
    ResultCommand,
    StatsCommand,
    VersionCommand,
)
from metamorphosis.protocol.framing import MetaProtocol
from tests.protocol import strategies


class Recorder(MetaProtocol):
    """
    Records what it receives; quits like the broker does.
    """

    def __init__(self):
        self.received = []
        self.errors = []

    def commandReceived(self, command):
        self.received.append(command)
        if isinstance(command, QuitCommand):
            self.transport.loseConnection()


class Rejecter(Recorder):
    """
    A server that answers a malformed request with what the error says,
    the way the broker does.
    """

    def protocolErrorReceived(self, error):
        self.errors.append(error)
        self.sendCommand(ResultCommand(400, str(error).encode("utf-8"), error.opaque))
        self.transport.loseConnection()


class Exploding(MetaProtocol):
    def commandReceived(self, command):
        raise RuntimeError("handler bug")


class ExplodingOnError(Recorder):
    def protocolErrorReceived(self, error):
        raise RuntimeError("error handler bug")


def connected(protocolClass):
    receiver = protocolClass()
    transport = StringTransport()
    receiver.makeConnection(transport)
    return receiver, transport


def replies(data):
    return CommandParser().feed(data)


class MetaProtocolTests(SynchronousTestCase):
    def test_chunking(self):
        """
        Commands arrive whole and in order whatever the chunking, including
        a body split across chunks and several commands in one chunk.
        """
        receiver, _ = connected(Recorder)
        stream = (
            b"put test 0 5 0 907060870 -2147483648\r\nhello"
            b"get test g 0 0 1048576 -2\r\nstats\r\nversion 7\r\n"
        )
        for cut in (1, 3, 38, 41, 44, 60):
            receiver.dataReceived(stream[:cut])
            stream = stream[cut:]
        receiver.dataReceived(stream)
        self.assertEqual(
            receiver.received,
            [
                PutCommand("test", 0, b"hello", 0, -2147483648, 907060870),
                GetCommand("test", "g", 0, 0, 1048576, -2),
                StatsCommand(),
                VersionCommand(7),
            ],
        )

    @settings(max_examples=50, deadline=None)
    @given(st.lists(strategies.commands, max_size=6), st.data())
    def test_anySplit(self, commands, data):
        commands = [c for c in commands if not isinstance(c, QuitCommand)]
        stream = b"".join(command.encode() for command in commands)
        cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=10)))
        receiver, transport = connected(Recorder)
        start = 0
        for cut in cuts + [len(stream)]:
            receiver.dataReceived(stream[start:cut])
            start = cut
        self.assertEqual(receiver.received, commands)
        self.assertFalse(transport.disconnecting)

    def test_sendCommand(self):
        receiver, transport = connected(Recorder)
        receiver.sendCommand(ResultCommand(200, b"1.4.6.2", -5))
        self.assertEqual(transport.value(), b"result 200 7 -5\r\n1.4.6.2")

    def test_malformedDefault(self):
        """
        By default a malformed command is logged and the connection closed
        without a reply, as Java does; what came before it is handled.
        """
        receiver, transport = connected(Recorder)
        with capturedLogs() as events:
            receiver.dataReceived(b"version 1\r\nhello world\r\nversion 2\r\n")
        self.assertEqual(receiver.received, [VersionCommand(1)])
        self.assertEqual(transport.value(), b"")
        self.assertTrue(transport.disconnecting)
        self.assertIn("hello world", str(events[-1]["error"]))
        receiver.dataReceived(b"version 3\r\n")
        self.assertEqual(receiver.received, [VersionCommand(1)])

    def test_malformedError(self):
        """
        The error a malformed request gives has the explanation and the
        request's opaque, for a server to answer with; nothing more is
        decoded.
        """
        receiver, transport = connected(Rejecter)
        receiver.dataReceived(b"stats\r\nget meta-test g x 0 100 17\r\n")
        receiver.dataReceived(b"version 2\r\n")
        self.assertEqual(receiver.received, [StatsCommand()])
        [reply] = replies(transport.value())
        self.assertEqual(reply.code, 400)
        self.assertEqual(reply.opaque, 17)
        self.assertIn('For input string: "x"', reply.message)
        self.assertIn("get meta-test g x 0 100 17", reply.message)
        self.assertTrue(transport.disconnecting)

    def test_malformedErrorWithoutOpaque(self):
        for line in (b"hello world\r\n", b"\r\n", b"put meta-test\r\n",
                     b"get meta-test g 0 0 100\r\n", b"transaction TX:s:1 s BOGUS\r\n",
                     b"\xff\xfe\r\n"):
            receiver, transport = connected(Rejecter)
            with capturedLogs():
                receiver.dataReceived(line)
            [reply] = replies(transport.value())
            self.assertEqual((reply.code, reply.opaque), (400, 0), line)
            self.assertTrue(transport.disconnecting)

    def test_bodyLimit(self):
        class Small(Rejecter):
            maxBodySize = 4

        receiver, transport = connected(Small)
        with capturedLogs():
            receiver.dataReceived(b"put t 0 4 0 1 8\r\nabcdput t 0 5 0 1 9\r\n")
        self.assertEqual(receiver.received, [PutCommand("t", 0, b"abcd", 0, 8, 1)])
        [reply] = replies(transport.value())
        self.assertEqual((reply.code, reply.opaque), (400, 9))
        self.assertIn("exceeds the maximum of 4", reply.message)

    def test_handlerErrorDoesNotEscape(self):
        """
        An exception from C{commandReceived} is logged and closes the
        connection; it does not reach the caller (the reactor).
        """
        receiver, transport = connected(Exploding)
        receiver.dataReceived(b"version 1\r\nversion 2\r\n")
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertTrue(transport.disconnecting)
        receiver.dataReceived(b"version 3\r\n")
        self.assertEqual(self.flushLoggedErrors(RuntimeError), [])

    def test_errorHandlerErrorDoesNotEscape(self):
        """
        Neither does an exception from C{protocolErrorReceived}, whether the
        error is in the data or in its end.
        """
        receiver, transport = connected(ExplodingOnError)
        receiver.dataReceived(b"bogus\r\n")
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertTrue(transport.disconnecting)
        receiver, transport = connected(ExplodingOnError)
        receiver.dataReceived(b"put t 0 9 0 1 2\r\n")
        receiver.readConnectionLost()
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertTrue(transport.disconnecting)

    def test_unhandledCommand(self):
        receiver, transport = connected(MetaProtocol)
        receiver.dataReceived(b"version 1\r\n")
        self.assertEqual(len(self.flushLoggedErrors(NotImplementedError)), 1)
        self.assertTrue(transport.disconnecting)

    def test_quitStopsDecoding(self):
        """
        Once the handler closes the connection, pipelined commands after it
        are not handled.
        """
        receiver, transport = connected(Recorder)
        receiver.dataReceived(b"version 1\r\nquit\r\nversion 2\r\n")
        self.assertEqual(receiver.received, [VersionCommand(1), QuitCommand()])
        self.assertTrue(transport.disconnecting)

    def test_inputEndsWithinBody(self):
        """
        The peer half-closes after a body shorter than declared: a server
        answers 400 with the put's opaque and closes.
        """
        receiver, transport = connected(Rejecter)
        receiver.dataReceived(b"put t 0 100 0 1 -7\r\nabc")
        with capturedLogs():
            receiver.readConnectionLost()
        [reply] = replies(transport.value())
        self.assertEqual((reply.code, reply.opaque), (400, -7))
        self.assertIn("3 of 100 body bytes", reply.message)
        self.assertTrue(transport.disconnecting)
        self.assertEqual(receiver.received, [])

    def test_inputEndsWithinLine(self):
        receiver, transport = connected(Rejecter)
        receiver.dataReceived(b"version 1\r\nvers")
        with capturedLogs():
            receiver.readConnectionLost()
        [reply] = replies(transport.value())
        self.assertEqual((reply.code, reply.opaque), (400, 0))
        self.assertIn("unterminated", reply.message)

    def test_inputEndsBetweenCommands(self):
        receiver, transport = connected(Rejecter)
        receiver.dataReceived(b"version 1\r\n")
        receiver.readConnectionLost()
        self.assertEqual(transport.value(), b"")
        self.assertTrue(transport.disconnecting)
        self.assertEqual(receiver.errors, [])

    def test_inputEndsBeforeAnyData(self):
        receiver, transport = connected(Rejecter)
        receiver.readConnectionLost()
        receiver.writeConnectionLost()
        self.assertTrue(transport.disconnecting)

    def test_connectionLostWithinCommand(self):
        """
        A connection lost outright within a command is only logged.
        """
        receiver, transport = connected(Rejecter)
        receiver.dataReceived(b"put t 0 100 0 1 -7\r\nabc")
        with capturedLogs() as events:
            receiver.connectionLost()
        self.assertIn("3 of 100", str(events[-1]["error"]))
        self.assertEqual(transport.value(), b"")
        self.assertEqual(receiver.errors, [])


class _Client(protocol.Protocol):
    def __init__(self, request):
        self.request = request
        self.received = b""
        self.done = defer.Deferred()

    def connectionMade(self):
        self.transport.write(self.request)
        self.transport.loseWriteConnection()

    def dataReceived(self, data):
        self.received += data

    def connectionLost(self, reason):
        self.done.callback(self.received)


class TCPTests(TestCase):
    """
    Over a real socket: a client that sends a truncated put and shuts its
    writing side gets the 400 reply, then the server closes.
    """

    @defer.inlineCallbacks
    def test_halfCloseWithinBody(self):
        factory = protocol.Factory.forProtocol(Rejecter)
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        client = _Client(b"version 5\r\nput t 0 100 0 1 -7\r\nabc")
        yield connectProtocol(
            TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port), client
        )
        with capturedLogs():
            received = yield client.done
        [reply] = replies(received)
        self.assertEqual((reply.code, reply.opaque), (400, -7))
        self.assertIn("3 of 100 body bytes", reply.message)

    @defer.inlineCallbacks
    def test_malformedOverTCP(self):
        factory = protocol.Factory.forProtocol(Rejecter)
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        client = _Client(b"pingpong\r\n")
        yield connectProtocol(
            TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port), client
        )
        with capturedLogs():
            received = yield client.done
        [reply] = replies(received)
        self.assertEqual((reply.code, reply.opaque), (400, 0))
        self.assertIn("pingpong", reply.message)

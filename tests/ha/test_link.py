"""
Tests for L{metamorphosis.ha.link}: requests matched to replies by opaque,
timeouts, connection loss, and the self-healing link over real sockets.
"""

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import defer, error, protocol, reactor
from twisted.internet.task import Clock, deferLater
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase, TestCase

from metamorphosis.broker.store.bursts import acknowledging, batchedWrites
from metamorphosis.ha.link import (
    NotConnected,
    OpaqueGenerator,
    PeerLink,
    RequestProtocol,
    RequestTimeout,
)
from metamorphosis.protocol.commands import (
    CommandParser,
    ProtocolError,
    ResultCommand,
    SyncCommand,
    ValueCommand,
    encodeSyncs,
    syncHead,
)


class OpaqueGeneratorTests(SynchronousTestCase):
    def test_javaSequence(self):
        """
        Opaques start at C{Integer.MIN_VALUE} and wrap at C{Integer.MAX_VALUE}.
        """
        opaques = OpaqueGenerator()
        self.assertEqual([opaques.next() for _ in range(3)], [-(2**31), -(2**31) + 1, -(2**31) + 2])
        opaques._next = 2**31 - 1
        self.assertEqual([opaques.next(), opaques.next()], [2**31 - 1, -(2**31)])


    @given(st.integers(-(2**31), 2**31 - 1), st.integers(1, 300))
    def test_take(self, start, count):
        """
        L{OpaqueGenerator.take} gives the opaques as many C{next} calls
        would, in order, and C{next} goes on after them.
        """
        taken, stepped = OpaqueGenerator(), OpaqueGenerator()
        taken._next = stepped._next = start
        opaques = taken.take(count)
        expected = [stepped.next() for _ in range(count)]
        self.assertEqual(list(opaques), expected)
        self.assertEqual(taken.next(), stepped.next())


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
        self.clock.advance(0)
        self.assertEqual(self.transport.value(), b"sync t 0 4 0 -5 12 7\r\nbody")

    def test_requestsOfOneTurnInOneWrite(self):
        """
        The requests made in one turn of the reactor leave together, in one
        write at the end of the turn (a sync master's puts of one turn
        reach the slave in one segment).
        """
        writes = []
        self.transport.write = writes.append
        self.proto.request(self.sync(1), 1)
        self.proto.request(self.sync(2), 1)
        self.assertEqual(writes, [])
        self.clock.advance(0)
        self.assertEqual(writes, [self.sync(1).encode() + self.sync(2).encode()])
        self.proto.request(self.sync(3), 1)
        self.clock.advance(0)
        self.assertEqual(writes[1:], [self.sync(3).encode()])

    def test_requestsOfOneReadLeaveWhenItIsHandled(self):
        """
        The requests made while the broker handles one socket read
        (L{batchedWrites}) leave in one write as soon as the read is
        handled, before what the store queued for the end of the read (its
        local write and fsync), not at the end of the reactor turn.
        """
        writes = []
        self.transport.write = writes.append
        order = []
        with batchedWrites:
            self.proto.request(self.sync(1), 1)
            batchedWrites.later(lambda: order.append(list(writes)))
            with batchedWrites:
                self.proto.request(self.sync(2), 1)
            self.assertEqual(writes, [])
        both = self.sync(1).encode() + self.sync(2).encode()
        self.assertEqual(writes, [both])
        self.assertEqual(order, [[both]])
        # No timer was left for the end of the turn.
        self.clock.advance(0)
        self.assertEqual(writes, [both])

    def test_onSentAfterEachWrite(self):
        """
        C{onSent} is called once per write of requests, after it: a sync
        master polls for the replies from then on.
        """
        events = []
        proto = RequestProtocol(self.clock, onSent=lambda: events.append("sent"))
        transport = StringTransport()
        transport.write = lambda data: events.append(data)
        proto.makeConnection(transport)
        proto.request(self.sync(1), 1)
        proto.request(self.sync(2), 1)
        self.assertEqual(events, [])
        self.clock.advance(0)
        self.assertEqual(events, [self.sync(1).encode() + self.sync(2).encode(), "sent"])
        with batchedWrites:
            proto.request(self.sync(3), 1)
            proto.request(self.sync(4), 1)
        self.assertEqual(events[2:], [self.sync(3).encode() + self.sync(4).encode(), "sent"])

    def test_readOfOneRequestToAnIdlePeer(self):
        """
        A read that queued one request while no other is outstanding sends
        it as soon as the read is handled: the peer waits for nothing else.
        """
        writes = []
        self.transport.write = writes.append
        with batchedWrites:
            self.proto.request(self.sync(1), 1)
        self.assertEqual(writes, [self.sync(1).encode()])
        # No flush was left for the end of the turn.
        now = self.clock.seconds()
        self.assertEqual([call for call in self.clock.getDelayedCalls() if call.getTime() <= now], [])

    def test_readsOfOneRequestShareTheTurnsWrite(self):
        """
        While requests are outstanding, a read that queued one request (one
        put per connection, many connections) does not send it alone: it
        leaves at the end of the turn with those of the other reads of the
        turn.
        """
        writes = []
        self.transport.write = writes.append
        with batchedWrites:
            self.proto.request(self.sync(1), 1)
        with batchedWrites:
            self.proto.request(self.sync(2), 1)
        with batchedWrites:
            self.proto.request(self.sync(3), 1)
        self.assertEqual(writes, [self.sync(1).encode()])
        self.clock.advance(0)
        self.assertEqual(writes, [self.sync(1).encode(), self.sync(2).encode() + self.sync(3).encode()])

    def test_repliesHandledWhileAcknowledging(self):
        """
        The replies of one read are handled inside L{acknowledging}, so the
        broker answers the puts they complete together, when the read is
        handled.
        """
        depths = []
        self.proto.send(self.sync(1), 1, lambda reply: depths.append(acknowledging.depth), None)
        self.proto.send(self.sync(2), 1, lambda reply: depths.append(acknowledging.depth), None)
        self.proto.dataReceived(ResultCommand(200, b"", 1).encode() + ResultCommand(200, b"", 2).encode())
        self.assertEqual(depths, [1, 1])
        self.assertEqual(acknowledging.depth, 0)

    def test_connectionLostWithRequestsQueuedInARead(self):
        """
        A connection lost while the requests of a read wait for its end
        writes nothing when the read is over.
        """
        writes = []
        self.transport.write = writes.append
        with batchedWrites:
            self.proto.request(self.sync(1), 1).addErrback(lambda f: None)
            self.proto.connectionLost(error.ConnectionLost())
        self.assertEqual(writes, [])

    def test_timeoutsShareOneTimer(self):
        """
        One timer serves every request, and each still fails at its own
        deadline, a shorter timeout made later included.
        """
        first = self.proto.request(self.sync(1), 2.0)
        self.clock.advance(1)
        second = self.proto.request(self.sync(2), 2.0)
        third = self.proto.request(self.sync(3), 0.5)
        self.clock.advance(0)
        # The heartbeat and the one request timer.
        self.assertEqual(len(self.clock.getDelayedCalls()), 2)
        self.clock.advance(0.5)
        self.failureResultOf(third, RequestTimeout)
        self.assertNoResult(first)
        self.clock.advance(0.5)
        self.failureResultOf(first, RequestTimeout)
        self.assertNoResult(second)
        self.clock.advance(0.9)
        self.assertNoResult(second)
        self.clock.advance(0.1)
        self.failureResultOf(second, RequestTimeout)

    def test_timerLeftAfterReplies(self):
        """
        The timer left when every request was answered does not fail a
        later request before its own deadline.
        """
        first = self.proto.request(self.sync(1), 2.0)
        self.proto.dataReceived(ResultCommand(200, b"", 1).encode())
        self.successResultOf(first)
        self.clock.advance(1)
        second = self.proto.request(self.sync(2), 2.0)
        self.clock.advance(1.9)
        self.assertNoResult(second)
        self.clock.advance(0.1)
        self.failureResultOf(second, RequestTimeout)

    def test_repliesMatchedByOpaque(self):
        """
        Replies may come in any order, in any chunking; each fires the
        request with its opaque.
        """
        first = self.proto.request(self.sync(1), 1)
        second = self.proto.request(self.sync(2), 1)
        self.clock.advance(0)
        data = ValueCommand(b"xyz", 2).encode() + ResultCommand(200, b"1 0 0", 1).encode()
        for i in range(len(data)):
            self.proto.dataReceived(data[i : i + 1])
        self.assertEqual(self.successResultOf(first), ResultCommand(200, b"1 0 0", 1))
        self.assertEqual(self.successResultOf(second), ValueCommand(b"xyz", 2))
        # The request timer fires once at its deadline, for nothing, and
        # is gone: only the heartbeat is left.
        self.clock.advance(1)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)

    def test_sendWithCallables(self):
        """
        L{RequestProtocol.send} calls back with the reply, or with a
        failure on timeout, as L{RequestProtocol.request} fires its
        L{Deferred}.
        """
        replies, failures = [], []
        self.proto.send(self.sync(1), 1, replies.append, failures.append)
        self.proto.send(self.sync(2), 1, replies.append, failures.append)
        self.proto.dataReceived(ResultCommand(200, b"", 1).encode())
        self.assertEqual(replies, [ResultCommand(200, b"", 1)])
        self.clock.advance(1)
        [failure] = failures
        self.assertTrue(failure.check(RequestTimeout))

    def test_sendFrame(self):
        """
        L{RequestProtocol.sendFrame} writes the same bytes as the command
        it stands for, with the next opaque, and matches the reply by it.
        """
        replies = []
        opaques = OpaqueGenerator()
        opaques._next = 41
        self.proto._opaques = opaques
        self.proto.sendFrame(syncHead("t", 0, 4, 0, -5, 12), b"body", 1, replies.append, None)
        self.clock.advance(0)
        self.assertEqual(self.transport.value(), SyncCommand("t", 0, b"body", 0, -5, 41, 12).encode())
        self.proto.dataReceived(ResultCommand(200, b"", 41).encode())
        self.assertEqual(replies, [ResultCommand(200, b"", 41)])

    def test_sendFrames(self):
        """
        L{RequestProtocol.sendFrames} writes what C{encode} makes of the
        opaques the generator gives next (in a row, wrapping), at once; each reply goes to C{onAnswer} as its code, opaque and body,
        matched by its opaque, and a request unanswered at the deadline
        fails.
        """
        answers, failures, encoded = [], [], []
        opaques = OpaqueGenerator()
        opaques._next = 2**31 - 2
        self.proto._opaques = opaques
        syncs = [(msgId, 0, b"b%d" % (msgId,), 12) for msgId in range(3)]

        def encode(opaques):
            encoded.append(list(opaques))
            return encodeSyncs("t", 0, syncs, opaques)

        sent = self.proto.sendFrames(3, encode, 1, lambda *answer: answers.append(answer), failures.append)
        self.assertEqual((list(sent), encoded), ([2**31 - 2, 2**31 - 1, -(2**31)],
                                                    [[2**31 - 2, 2**31 - 1, -(2**31)]]))
        expected = [SyncCommand("t", 0, b"b%d" % (i,), 0, i, opaque, 12)
                    for i, opaque in enumerate([2**31 - 2, 2**31 - 1, -(2**31)])]
        self.assertEqual(self.transport.value(), b"".join(command.encode() for command in expected))
        self.assertEqual(opaques.next(), -(2**31) + 1)
        self.proto.dataReceived(ResultCommand(200, b"x", -(2**31)).encode()
                                + ResultCommand(500, b"no", 2**31 - 2).encode())
        self.assertEqual(answers, [(200, -(2**31), b"x"), (500, 2**31 - 2, b"no")])
        self.assertEqual(failures, [])
        self.clock.advance(1)
        [failure] = failures
        self.assertTrue(failure.check(RequestTimeout))

    def test_sendFramesAnsweredByOtherCommand(self):
        """
        A reply to a frame that is not a C{result} (decoded by the general
        parser) is answered with a code of L{None}.
        """
        answers = []
        [first] = self.proto.sendFrames(1, lambda opaques: encodeSyncs("t", 0, [(1, 0, b"x", 12)], opaques), 1,
                                      lambda *answer: answers.append(answer), None)
        self.proto.dataReceived(ValueCommand(b"v", first).encode())
        self.assertEqual(answers, [(None, first, b"")])

    def test_sendFramesLeaveAtOnce(self):
        """
        Frames sent while a read is handled leave at once, in one write
        with the requests queued before them, not when the read is handled.
        """
        writes = []
        self.patch(self.transport, "write", writes.append)
        with batchedWrites:
            self.proto.request(self.sync(1), 1)
            self.assertEqual(writes, [])
            self.proto.sendFrames(2, lambda opaques: encodeSyncs("t", 0, [(1, 0, b"x", 12), (2, 0, b"y", 12)], opaques),
                                  1, lambda *answer: None, lambda failure: None)
            self.assertEqual(len(writes), 1)
        self.clock.advance(0)
        self.assertEqual(len(writes), 1)
        self.assertEqual([command.opaque for command in CommandParser().parse(writes[0])],
                         [1, -(2**31), -(2**31) + 1])

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
        After 10 s without sending anything the link sends C{version};
        sending postpones it, replies do not (what the peer reads from this
        end is what tells it this end is alive).
        """
        self.clock.advance(6)
        self.proto.request(self.sync(1), 1)
        self.clock.advance(0)
        self.transport.clear()
        self.proto.dataReceived(ResultCommand(200, b"", 1).encode())
        self.clock.advance(9)
        self.assertEqual(self.transport.value(), b"")
        self.clock.advance(5)
        self.assertEqual(self.transport.value(), b"version -2147483648\r\n")
        self.transport.clear()
        self.proto.dataReceived(ResultCommand(200, b"1.4.6.2", -(2**31)).encode())
        self.clock.advance(5)
        self.assertEqual(self.transport.value(), b"")
        self.clock.advance(5)
        self.assertEqual(self.transport.value(), b"version -2147483647\r\n")

    def test_shortHeartbeat(self):
        """
        With a heartbeat of 0.3 s (a sync master's C{linkHeartbeatMs}), an
        idle link sends C{version} within 0.45 s of its last write (its
        check runs every 0.15 s), whether or not the peer answers; a
        request in between postpones it.
        """
        proto = RequestProtocol(self.clock, heartbeatSeconds=0.3, heartbeatTimeout=2.0)
        transport = StringTransport()
        writes = []
        transport.write = lambda data: writes.append((round(self.clock.seconds(), 2), data))
        proto.makeConnection(transport)
        self.clock.pump([0.05] * 20)
        self.assertEqual([at for at, _ in writes], [0.3, 0.6, 0.9])
        self.assertTrue(all(data.startswith(b"version ") for _, data in writes))
        del writes[:]
        proto.request(self.sync(1), 2.0)
        self.clock.advance(0)
        self.clock.pump([0.05] * 10)
        self.assertEqual([at for at, _ in writes], [1.0, 1.35])
        self.assertTrue(writes[1][1].startswith(b"version "))

    def test_malformedReply(self):
        """
        A reply that cannot be parsed drops the connection.
        """
        self.proto.dataReceived(b"bogus\r\n")
        self.assertTrue(self.transport.disconnecting)


class _Recorder(RequestProtocol):
    def __init__(self, clock):
        RequestProtocol.__init__(self, clock)
        self.received = []

    def commandReceived(self, command):
        self.received.append(command)

    def resultReceived(self, code, body, opaque):
        self.received.append(ResultCommand(code, body, opaque))


_frames = st.one_of(
    st.builds(ResultCommand, st.integers(-(2**31), 2**31 - 1), st.binary(max_size=40),
              st.integers(-(2**31), 2**31 - 1)).map(lambda command: command.encode()),
    st.builds(ValueCommand, st.binary(max_size=40), st.integers(-(2**31), 2**31 - 1)).map(lambda command: command.encode()),
    # Near misses: out of range, signs, long or huge lengths, stray bytes.
    st.sampled_from([b"result 200 1 2147483648\r\nx", b"result +200 0 1\r\n", b"result 200 -1 1\r\n",
                     b"result 200 0 1 extra\r\n", b"result 200 99999999 1\r\n", b"result  200 0 1\r\n",
                     b"result 200 0 01\r\n", b"result 2147483648 0 1\r\n", b"\r\n", b"x"]),
)


class WholeResultsTests(SynchronousTestCase):
    """
    The link's fast path for whole C{result} replies decodes exactly what
    L{CommandParser} decodes, in any chunking, and leaves everything else
    (and the malformed) to it.
    """

    @settings(max_examples=300)
    @given(st.lists(_frames, max_size=8), st.data())
    def test_sameAsCommandParser(self, frames, data):
        stream = b"".join(frames)
        cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=6)))
        chunks = [stream[a:b] for a, b in zip([0] + cuts, cuts + [len(stream)])]
        parser = CommandParser(maxBodySize=1000)
        expected, failed = [], False
        try:
            for chunk in chunks:
                expected.extend(parser.parse(chunk))
        except ProtocolError:
            failed = True
        proto = _Recorder(Clock())
        proto._parser = CommandParser(maxBodySize=1000)
        transport = StringTransport()
        proto.makeConnection(transport)
        for chunk in chunks:
            if transport.disconnecting:
                break
            proto.dataReceived(chunk)
        self.assertEqual(proto.received, expected)
        self.assertEqual(transport.disconnecting, failed)
        if failed:
            self.flushLoggedErrors()


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

    def test_sendNotConnected(self):
        failures = []
        self.link.send(lambda opaque: None, 1, failures.append, failures.append)
        [failure] = failures
        self.assertTrue(failure.check(NotConnected))

    def test_sendFramesNotConnected(self):
        """
        Without a connection, each frame fails at once, and no opaque is
        given.
        """
        failures = []
        self.assertIsNone(self.link.sendFrames(2, None, 1, failures.append, failures.append))
        self.assertEqual([failure.check(NotConnected) for failure in failures], [NotConnected] * 2)

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


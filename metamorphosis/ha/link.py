"""
A broker's own connection to its replication peer: the sync master's link
to its slave (C{sync}), the async slave's link to its master (C{offset},
C{get}, C{stats}).

One persistent connection, re-established whenever it drops (gecko's
C{healConnectionInterval} behaviour), carrying pipelined requests that are
matched to their replies by opaque.  A request that is not answered in time
fails with L{RequestTimeout}, the analogue of the 504 gecko synthesizes for
the Java broker.

A connection that stops answering is dropped (and so re-established): after
L{RequestProtocol.maxTimeouts} requests in a row time out, and a quiet link
is probed with gecko's heartbeat, a C{version} request after
C{heartbeatSeconds} without sending anything.  So a peer that vanished
without closing its sockets (a cut cable, a frozen host) is noticed; and,
with a short C{heartbeatSeconds} (a sync master's link, C{linkHeartbeatMs}),
the peer reads something at least that often, so that it can tell a silent
link (a frozen or dead host at this end) from an idle one.
"""

import re

from twisted.application.internet import ClientService
from twisted.internet import defer, error
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from metamorphosis.broker.store.bursts import acknowledging, batchedWrites
from metamorphosis.broker.tcpdirect import directSocket, writeNow
from metamorphosis.logfields import errorText, hostPort
from metamorphosis.protocol.commands import CommandParser, ProtocolError, VersionCommand, newResult

_INT_MIN = -(2**31)
_INT_MAX = 2**31 - 1

_RESULT_LINE = re.compile(rb"result (-?[0-9]{1,10}) ([0-9]{1,10}) (-?[0-9]{1,10})\r\n")


def wholeResults(data, maxBodySize):
    """
    The C{result} replies at the start of C{data} that are whole and plain
    (C{result CODE LENGTH OPAQUE}, decimal, within Java's int range, the
    body within C{maxBodySize}), each as C{(code, body, opaque)}, and how
    many bytes of C{data} they take: the rest is L{CommandParser}'s.  A
    sync master reads one C{result} per put from its slave, in bursts of
    whole replies: decoding them here costs a fraction of the general
    parser's line decoding and token checks, and a reply to
    L{RequestProtocol.sendFrames} needs no command object.
    """
    results = []
    match = _RESULT_LINE.match
    position, size = 0, len(data)
    while position < size:
        line = match(data, position)
        if line is None:
            break
        code, length, opaque = line.groups()
        length = int(length)
        start = line.end()
        stop = start + length
        code = int(code)
        opaque = int(opaque)
        if (stop > size or length > maxBodySize
                or not (_INT_MIN <= code <= _INT_MAX and _INT_MIN <= opaque <= _INT_MAX)):
            break
        results.append((code, data[start:stop], opaque))
        position = stop
    return results, position


class RequestTimeout(Exception):
    """
    The peer did not answer a request within its timeout.
    """


class NotConnected(Exception):
    """
    There is no connection to the peer at the moment.
    """


class OpaqueGenerator:
    """
    Opaques as gecko's C{OpaqueGenerator} hands them out: from
    C{Integer.MIN_VALUE} upwards, wrapping within 32 bits.
    """

    def __init__(self):
        self._next = _INT_MIN

    def next(self):
        opaque = self._next
        self._next = following(opaque)
        return opaque

    def take(self, count):
        """
        The C{count} opaques as many L{next} calls in a row give, taken at
        once.

        @return: a sequence of them, in the order given.
        """
        first = self._next
        self._next = following(first, count)
        if first + count - 1 <= _INT_MAX:
            return range(first, first + count)
        return [following(first, index) for index in range(count)]


def following(opaque, count=1):
    """
    The opaque C{count} after C{opaque} as L{OpaqueGenerator} hands them
    out (within 32 bits, from C{Integer.MAX_VALUE} on to
    C{Integer.MIN_VALUE}).
    """
    return (opaque + count - _INT_MIN) % 2**32 + _INT_MIN


class RequestProtocol(Protocol):
    """
    The client end of one connection: L{request} sends a command and gives
    a L{Deferred} of the reply with the same opaque.
    """

    log = Logger()

    #: Consecutive timed-out requests after which the connection is dropped.
    maxTimeouts = 3

    #: Seconds without sending after which a heartbeat is sent (gecko's
    #: client idle time), and how long it may take, unless given.
    heartbeatSeconds = 10.0
    heartbeatTimeout = 5.0

    def __init__(self, clock, onMade=None, onLost=None, opaques=None, heartbeatSeconds=None, heartbeatTimeout=None,
                 onSent=None):
        """
        @param onSent: L{None}, or called with no argument after each write
            of requests: their replies are near.
        """
        if heartbeatSeconds is not None:
            self.heartbeatSeconds = heartbeatSeconds
        if heartbeatTimeout is not None:
            self.heartbeatTimeout = heartbeatTimeout
        self._parser = CommandParser()
        # Whether the input is between two replies (see wholeResults).
        self._between = True
        self._clock = clock
        self._onMade = onMade
        self._onLost = onLost
        self._onSent = onSent
        self._opaques = opaques if opaques is not None else OpaqueGenerator()
        self._pending = {}
        self._expiry = None
        self._outgoing = []
        self._flushCall = None
        # Commands queued during the socket read being handled.
        self._inRead = 0
        self._timeouts = 0
        self._lastSent = clock.seconds()
        self._heartbeat = LoopingCall(self._checkIdle)
        self._heartbeat.clock = clock

    def connectionMade(self):
        # Small requests answered one by one: never wait for Nagle
        # (gecko sets TCP_NODELAY too).
        if hasattr(self.transport, "setTcpNoDelay"):
            self.transport.setTcpNoDelay(True)
        self._lastSent = self._clock.seconds()
        self._heartbeat.start(self.heartbeatSeconds / 2, now=False)
        if self._onMade is not None:
            self._onMade(self)

    def _checkIdle(self):
        # Measured from the last write, not the last read: what the peer
        # reads from this end is what tells it that this end is alive (a
        # reply that comes late must not leave the peer waiting longer).
        if self._clock.seconds() - self._lastSent >= self.heartbeatSeconds:
            self.request(VersionCommand(self._opaques.next()), self.heartbeatTimeout).addErrback(lambda f: None)

    def request(self, command, timeout):
        """
        Send C{command} (which carries its opaque) and wait for its reply.

        @param timeout: seconds to wait.
        @return: a L{Deferred} firing with the reply command, or failing with
            L{RequestTimeout} or the reason the connection was lost.
        """
        d = defer.Deferred()
        self.send(command, timeout, d.callback, d.errback)
        return d

    def send(self, command, timeout, onReply, onFailure):
        """
        L{request} with two callables instead of a L{Deferred}: C{onReply}
        is called with the reply, or C{onFailure} with a L{Failure} of
        L{RequestTimeout} or of the reason the connection was lost.  A sync
        master sends one request per put: this spares it a L{Deferred} each.
        """
        self._expect(command.opaque, timeout, onReply, onFailure)
        self.sendCommand(command)

    def sendFrame(self, head, body, timeout, onReply, onFailure):
        """
        L{send} for a request given as bytes: its line is C{head}, the next
        opaque and CRLF, and C{body} follows (both written as they are).  A
        sync master sends one C{sync} per put
        (L{metamorphosis.protocol.commands.syncHead}): this spares it a
        command object per put and a copy of the body.
        """
        opaque = self._opaques.next()
        self._expect(opaque, timeout, onReply, onFailure)
        self._queue([b"%s%d\r\n" % (head, opaque), body])

    def sendFrames(self, count, encode, timeout, onAnswer, onFailure):
        """
        Send C{count} requests given as bytes, in one go: C{encode(opaques)}
        gives them all, each with its opaque of C{opaques} (the next ones
        of the connection, L{OpaqueGenerator.take}).  They share one deadline and leave
        in one write, at once (with whatever was queued before them): they
        are gathered already.  For each, C{onAnswer(code, opaque, body)}
        is called with its reply (a C{result}; another command gives a
        code of L{None}), or C{onFailure} with a L{Failure}, which does not
        say which request it is of.  A sync master sends the syncs of a
        read's puts to a partition this way
        (L{metamorphosis.ha.samsa.SyncMasterProcessor.putBatchThen}): the
        slave starts on them while the master still handles the read, and
        their replies are handed over without a command object each.

        @return: the opaques of the requests, in order.
        """
        opaques = self._opaques.take(count)
        entry = (onAnswer, onFailure, self._deadline(timeout), True)
        pending = self._pending
        for opaque in opaques:
            pending[opaque] = entry
        self._outgoing.append(encode(opaques))
        self._flush()
        return opaques

    def _expect(self, opaque, timeout, onReply, onFailure):
        # The last item: whether onReply takes the reply's code, opaque and
        # body (sendFrames) rather than the reply.
        self._pending[opaque] = (onReply, onFailure, self._deadline(timeout), False)

    def _deadline(self, timeout):
        """
        When requests sent now with C{timeout} time out, with the timer
        set to fail them then.
        """
        deadline = self._clock.seconds() + timeout
        # One timer for all requests (see _expire), not one per request.
        if self._expiry is None:
            self._expiry = self._clock.callLater(timeout, self._expire)
        elif deadline < self._expiry.time:
            self._expiry.reset(timeout)
        return deadline

    def dataReceived(self, data):
        # The puts these replies complete are acknowledged together: the
        # broker holds their replies to the producers and sends them when
        # this read is processed, one write per connection, rather than at
        # the next reactor turn (see acknowledging).
        with acknowledging:
            self._received(data)

    def _received(self, data):
        if self._between:
            results, taken = wholeResults(data, self._parser.maxBodySize)
            for code, body, opaque in results:
                self.resultReceived(code, body, opaque)
            if taken == len(data):
                return
            data = data[taken:]
        try:
            for command in self._parser.parse(data):
                self.commandReceived(command)
        except ProtocolError as e:
            self._between = False
            self.log.error("Malformed reply from {peer}: {error}", peer=hostPort(self.transport.getPeer()), error=errorText(e))
            self.transport.abortConnection()
            return
        # The fast path only starts where the general parser holds nothing.
        self._between = self._parser.incompleteError() is None

    def resultReceived(self, code, body, opaque):
        """
        A C{result} decoded by the fast path (L{wholeResults}): to what
        waits for it, as L{commandReceived} hands over a command.
        """
        entry = self._pending.pop(opaque, None)
        if entry is None:
            self.log.debug("Ignoring a reply nobody waits for: result {code} {opaque}", code=code, opaque=opaque)
            return
        self._timeouts = 0
        if entry[3]:
            entry[0](code, opaque, body)
        else:
            entry[0](newResult(code, body, opaque))

    def sendCommand(self, command):
        """
        Queue C{command}; the commands queued together leave in one write,
        straight to the socket when nothing is buffered before it
        (L{writeNow}), without an C{epoll} round trip of Twisted's write
        buffer.

        Commands queued while the broker handles one socket read
        (L{batchedWrites}: a sync master's puts of that read) leave as soon
        as the read is handled when the read queued more than one, before
        the local write and fsync the read queued: the slave's write,
        fsync and reply are the longer leg of a replicated put, so they
        start first, and the slave reads, writes and fsyncs the read's
        puts in one go.  So does a read that queued one command when
        nothing else is outstanding: the slave is idle, and waiting gains
        it nothing (a producer with one sending thread: 2,235-2,457 puts a
        second through the pair against 1,758-1,922 when it waited).
        Otherwise a read that queued one command (one put per connection,
        many connections), and a command queued anywhere else, leave at the
        end of the reactor turn, with those of the other connections read
        in that turn: sent one by one while the slave is busy, it would
        read, write and fsync them one by one, at a higher cost per put.
        As Nagle's rule does for a socket, the first goes at once, and what
        follows while it is out is gathered.
        """
        self._queue([command.encode()])

    def _queue(self, chunks):
        self._outgoing.extend(chunks)
        if batchedWrites.depth:
            self._inRead += 1
            if self._inRead == 1:
                batchedWrites.later(self._readHandled)
        elif self._flushCall is None:
            self._flushCall = self._clock.callLater(0, self._flush)

    def _readHandled(self):
        queued, self._inRead = self._inRead, 0
        if queued > 1 or len(self._pending) == queued:
            # Several to send together, or the slave waits for nothing else.
            self._flush()
        elif self._flushCall is None and self._outgoing:
            self._flushCall = self._clock.callLater(0, self._flush)

    def _flush(self):
        if self._flushCall is not None:
            if self._flushCall.active():
                self._flushCall.cancel()
            self._flushCall = None
        if not self._outgoing:
            # Sent already, or the connection was lost meanwhile.
            return
        data, self._outgoing = b"".join(self._outgoing), []
        # Per write, not per request: a sync master sends one per put.
        self._lastSent = self._clock.seconds()
        if directSocket(self.transport) is not None:
            writeNow(self.transport, data)
        else:
            self.transport.write(data)
        if self._onSent is not None:
            self._onSent()

    def _expire(self):
        """
        Fail every request whose deadline has passed, and wait for the
        next deadline.
        """
        self._expiry = None
        # A timer may fire a hair before the deadline it was set for.
        now = self._clock.seconds() + 1e-6
        for opaque in [opaque for opaque, entry in self._pending.items() if entry[2] <= now]:
            self._timedOut(opaque)
        if self._pending:
            nearest = min(entry[2] for entry in self._pending.values())
            self._expiry = self._clock.callLater(max(0, nearest - self._clock.seconds()), self._expire)

    def _timedOut(self, opaque):
        onFailure = self._pending.pop(opaque)[1]
        self._timeouts += 1
        if self._timeouts == self.maxTimeouts:
            self.log.warn(
                "{peer} did not answer {count} requests in a row; dropping the connection",
                peer=hostPort(self.transport.getPeer()),
                count=self._timeouts,
            )
            self.transport.abortConnection()
        onFailure(Failure(RequestTimeout("no reply to request %d" % (opaque,))))

    def commandReceived(self, command):
        opaque = getattr(command, "opaque", None)
        entry = self._pending.pop(opaque, None)
        if entry is None:
            self.log.debug("Ignoring a reply nobody waits for: {command}", command=repr(command))
            return
        # The request timer stays when nothing is pending any more: it
        # fires once for nothing at its deadline, where cancelling it and
        # setting it again would cost a timer per burst of requests (a sync
        # master's puts of one read).
        self._timeouts = 0
        if entry[3]:
            entry[0](getattr(command, "code", None), opaque, getattr(command, "body", b""))
        else:
            entry[0](command)

    def connectionLost(self, reason=error.ConnectionDone):
        if self._heartbeat.running:
            self._heartbeat.stop()
        for call in (self._expiry, self._flushCall):
            if call is not None:
                call.cancel()
        self._expiry = self._flushCall = None
        self._outgoing = []
        pending, self._pending = self._pending, {}
        if self._onLost is not None:
            self._onLost(self)
        for entry in pending.values():
            entry[1](reason)


class PeerLink:
    """
    The persistent, self-healing connection to a peer broker.

    @ivar url: the peer as C{meta://host:port}.
    @ivar onConnected: L{None}, or called with no argument each time a
        connection is made.
    @ivar onSent: L{None}, or called with no argument after each write of
        requests to the peer, whose replies are then near (a sync master
        polls for them: L{metamorphosis.broker.idlepoll.IdlePoller.poke}).
    """

    onConnected = None
    onSent = None

    def __init__(self, reactor, host, port, retryIntervalSeconds=1.0, tls=None, heartbeatSeconds=None,
                 heartbeatTimeout=None):
        """
        @param tls: a L{metamorphosis.tls.ClientTLS} to connect over TLS.
        @param heartbeatSeconds: send a heartbeat after this long without
            sending anything (default: gecko's L{RequestProtocol.heartbeatSeconds}).
        @param heartbeatTimeout: how long a heartbeat may take (default:
            L{RequestProtocol.heartbeatTimeout}).
        """
        self.url = "meta://%s:%d" % (host, port)
        self.opaques = OpaqueGenerator()
        self._reactor = reactor
        self._protocol = None
        factory = Factory.forProtocol(lambda: RequestProtocol(
            reactor, self._connected, self._lost, self.opaques, heartbeatSeconds, heartbeatTimeout, self._sent))
        factory.noisy = False
        endpoint = TCP4ClientEndpoint(reactor, host, port, timeout=5)
        if tls is not None:
            endpoint = tls.wrap(endpoint, host)
        self._service = ClientService(
            endpoint,
            factory,
            retryPolicy=lambda attempt: retryIntervalSeconds,
            clock=reactor,
        )

    def _connected(self, protocol):
        self._protocol = protocol
        if self.onConnected is not None:
            self.onConnected()

    def _sent(self):
        if self.onSent is not None:
            self.onSent()

    def _lost(self, protocol):
        if self._protocol is protocol:
            self._protocol = None

    def start(self):
        self._service.startService()

    def stop(self):
        """
        Close the connection and stop reconnecting.

        @return: a L{Deferred} that fires when it is closed.
        """
        self._protocol = None
        return self._service.stopService()

    def whenConnected(self, **kwargs):
        return self._service.whenConnected(**kwargs)

    @property
    def connected(self):
        return self._protocol is not None

    def disconnect(self):
        """
        Drop the current connection (it is re-established later).
        """
        if self._protocol is not None:
            self._protocol.transport.loseConnection()

    def request(self, makeCommand, timeout):
        """
        Send the command C{makeCommand(opaque)} on the current connection.

        @return: a L{Deferred} of the reply; fails at once with
            L{NotConnected} when there is no connection.
        """
        if self._protocol is None:
            return defer.fail(NotConnected("not connected to %s" % (self.url,)))
        return self._protocol.request(makeCommand(self.opaques.next()), timeout)

    def send(self, makeCommand, timeout, onReply, onFailure):
        """
        L{request} with callables instead of a L{Deferred} (see
        L{RequestProtocol.send}); C{onFailure} is called at once with a
        L{NotConnected} failure when there is no connection.
        """
        if self._protocol is None:
            onFailure(Failure(NotConnected("not connected to %s" % (self.url,))))
            return
        self._protocol.send(makeCommand(self.opaques.next()), timeout, onReply, onFailure)

    def sendFrame(self, head, body, timeout, onReply, onFailure):
        """
        L{send} for a request given as bytes (see
        L{RequestProtocol.sendFrame}).
        """
        if self._protocol is None:
            onFailure(Failure(NotConnected("not connected to %s" % (self.url,))))
            return
        self._protocol.sendFrame(head, body, timeout, onReply, onFailure)

    def sendFrames(self, count, encode, timeout, onAnswer, onFailure):
        """
        Several requests given as bytes, in one go (see
        L{RequestProtocol.sendFrames}).

        @return: the opaques of the requests, or L{None} when there is no
            connection (each has failed then).
        """
        if self._protocol is None:
            for _ in range(count):
                onFailure(Failure(NotConnected("not connected to %s" % (self.url,))))
            return None
        return self._protocol.sendFrames(count, encode, timeout, onAnswer, onFailure)

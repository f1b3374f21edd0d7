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
L{RequestProtocol.heartbeatSeconds} without traffic.  So a peer that vanished
without closing its sockets (a cut cable, a frozen host) is noticed.
"""

from twisted.application.internet import ClientService
from twisted.internet import defer, error
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from metamorphosis.logfields import errorText, hostPort
from metamorphosis.protocol.commands import CommandParser, ProtocolError, VersionCommand

_INT_MIN = -(2**31)


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
        self._next = _INT_MIN if opaque == 2**31 - 1 else opaque + 1
        return opaque


class RequestProtocol(Protocol):
    """
    The client end of one connection: L{request} sends a command and gives
    a L{Deferred} of the reply with the same opaque.
    """

    log = Logger()

    #: Consecutive timed-out requests after which the connection is dropped.
    maxTimeouts = 3

    #: Seconds without traffic after which a heartbeat is sent (gecko's
    #: client idle time), and how long it may take.
    heartbeatSeconds = 10.0
    heartbeatTimeout = 5.0

    def __init__(self, clock, onMade=None, onLost=None, opaques=None):
        self._parser = CommandParser()
        self._clock = clock
        self._onMade = onMade
        self._onLost = onLost
        self._opaques = opaques if opaques is not None else OpaqueGenerator()
        self._pending = {}
        self._timeouts = 0
        self._lastTraffic = clock.seconds()
        self._heartbeat = LoopingCall(self._checkIdle)
        self._heartbeat.clock = clock

    def connectionMade(self):
        # Small requests answered one by one: never wait for Nagle
        # (gecko sets TCP_NODELAY too).
        if hasattr(self.transport, "setTcpNoDelay"):
            self.transport.setTcpNoDelay(True)
        self._lastTraffic = self._clock.seconds()
        self._heartbeat.start(self.heartbeatSeconds / 2, now=False)
        if self._onMade is not None:
            self._onMade(self)

    def _checkIdle(self):
        if self._clock.seconds() - self._lastTraffic >= self.heartbeatSeconds:
            self.request(VersionCommand(self._opaques.next()), self.heartbeatTimeout).addErrback(lambda f: None)

    def request(self, command, timeout):
        """
        Send C{command} (which carries its opaque) and wait for its reply.

        @param timeout: seconds to wait.
        @return: a L{Deferred} firing with the reply command, or failing with
            L{RequestTimeout} or the reason the connection was lost.
        """
        opaque = command.opaque
        d = defer.Deferred()
        call = self._clock.callLater(timeout, self._timedOut, opaque)
        self._pending[opaque] = (d, call)
        self.sendCommand(command)
        return d

    def dataReceived(self, data):
        self._lastTraffic = self._clock.seconds()
        try:
            for command in self._parser.parse(data):
                self.commandReceived(command)
        except ProtocolError as e:
            self.log.error("Malformed reply from {peer}: {error}", peer=hostPort(self.transport.getPeer()), error=errorText(e))
            self.transport.abortConnection()

    def sendCommand(self, command):
        self._lastTraffic = self._clock.seconds()
        self.transport.write(command.encode())

    def _timedOut(self, opaque):
        d, _ = self._pending.pop(opaque)
        self._timeouts += 1
        if self._timeouts == self.maxTimeouts:
            self.log.warn(
                "{peer} did not answer {count} requests in a row; dropping the connection",
                peer=hostPort(self.transport.getPeer()),
                count=self._timeouts,
            )
            self.transport.abortConnection()
        d.errback(RequestTimeout("no reply to request %d" % (opaque,)))

    def commandReceived(self, command):
        opaque = getattr(command, "opaque", None)
        entry = self._pending.pop(opaque, None)
        if entry is None:
            self.log.debug("Ignoring a reply nobody waits for: {command}", command=repr(command))
            return
        d, call = entry
        call.cancel()
        self._timeouts = 0
        d.callback(command)

    def connectionLost(self, reason=error.ConnectionDone):
        if self._heartbeat.running:
            self._heartbeat.stop()
        pending, self._pending = self._pending, {}
        if self._onLost is not None:
            self._onLost(self)
        for d, call in pending.values():
            call.cancel()
            d.errback(reason)


class PeerLink:
    """
    The persistent, self-healing connection to a peer broker.

    @ivar url: the peer as C{meta://host:port}.
    @ivar onConnected: L{None}, or called with no argument each time a
        connection is made.
    """

    onConnected = None

    def __init__(self, reactor, host, port, retryIntervalSeconds=1.0, tls=None):
        """
        @param tls: a L{metamorphosis.tls.ClientTLS} to connect over TLS.
        """
        self.url = "meta://%s:%d" % (host, port)
        self.opaques = OpaqueGenerator()
        self._reactor = reactor
        self._protocol = None
        factory = Factory.forProtocol(lambda: RequestProtocol(reactor, self._connected, self._lost, self.opaques))
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

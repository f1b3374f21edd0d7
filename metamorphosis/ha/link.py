"""
A broker's own connection to its replication peer: the sync master's link
to its slave (C{sync}), the async slave's link to its master (C{offset},
C{get}, C{stats}).

One persistent connection, re-established whenever it drops (gecko's
C{healConnectionInterval} behaviour), carrying pipelined requests that are
matched to their replies by opaque.  A request that is not answered in time
fails with L{RequestTimeout}, the analogue of the 504 gecko synthesizes for
the Java broker.
"""

from twisted.application.internet import ClientService
from twisted.internet import defer, error
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger

from metamorphosis.protocol.commands import CommandParser, ProtocolError

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

    def __init__(self, clock, onMade=None, onLost=None):
        self._parser = CommandParser()
        self._clock = clock
        self._onMade = onMade
        self._onLost = onLost
        self._pending = {}

    def connectionMade(self):
        # Small requests answered one by one: never wait for Nagle
        # (gecko sets TCP_NODELAY too).
        if hasattr(self.transport, "setTcpNoDelay"):
            self.transport.setTcpNoDelay(True)
        if self._onMade is not None:
            self._onMade(self)

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
        try:
            for command in self._parser.parse(data):
                self.commandReceived(command)
        except ProtocolError as e:
            self.log.error("Malformed reply from {peer}: {error}", peer=self.transport.getPeer(), error=e)
            self.transport.abortConnection()

    def sendCommand(self, command):
        self.transport.write(command.encode())

    def _timedOut(self, opaque):
        d, _ = self._pending.pop(opaque)
        d.errback(RequestTimeout("no reply to request %d" % (opaque,)))

    def commandReceived(self, command):
        opaque = getattr(command, "opaque", None)
        entry = self._pending.pop(opaque, None)
        if entry is None:
            self.log.debug("Ignoring a reply nobody waits for: {command!r}", command=command)
            return
        d, call = entry
        call.cancel()
        d.callback(command)

    def connectionLost(self, reason=error.ConnectionDone):
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
    """

    def __init__(self, reactor, host, port, retryIntervalSeconds=1.0):
        self.url = "meta://%s:%d" % (host, port)
        self.opaques = OpaqueGenerator()
        self._reactor = reactor
        self._protocol = None
        factory = Factory.forProtocol(lambda: RequestProtocol(reactor, self._connected, self._lost))
        self._service = ClientService(
            TCP4ClientEndpoint(reactor, host, port, timeout=5),
            factory,
            retryPolicy=lambda attempt: retryIntervalSeconds,
            clock=reactor,
        )

    def _connected(self, protocol):
        self._protocol = protocol

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

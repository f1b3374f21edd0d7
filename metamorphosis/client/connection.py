"""
Client connections to brokers.

L{MetaClientProtocol} is one TCP connection: it correlates replies to
requests by opaque (replies may come back in any order, docs/protocol.md), times requests out, and sends gecko's idle heartbeat (docs/protocol.md).  L{BrokerConnection} keeps one such connection to one broker
alive, reconnecting every two seconds; L{ConnectionPool} shares one
L{BrokerConnection} per broker URL between the producers and consumers of a
session factory, counting references as the Java C{RemotingClientWrapper}
does.
"""

import ipaddress
from urllib.parse import urlsplit

from twisted.application.internet import ClientService
from twisted.internet import defer
from twisted.internet.endpoints import HostnameEndpoint, TCP4ClientEndpoint, TCP6ClientEndpoint
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.python.failure import Failure

from metamorphosis.client.errors import (
    MetaClientError,
    MetaConnectionError,
    MetaTimeoutError,
)
from metamorphosis.protocol.commands import (
    GetCommand,
    OffsetCommand,
    PutCommand,
    QuitCommand,
    StatsCommand,
    TransactionCommand,
    VersionCommand,
)
from metamorphosis.protocol.framing import MetaProtocol
from metamorphosis.protocol.status import OK

INT_MIN = -(2**31)
INT_MAX = 2**31 - 1


class OpaqueGenerator:
    """
    Request opaques as gecko's C{OpaqueGenerator} hands them out: from
    C{-2147483648} upwards, back to the start before reaching
    C{2147483647 - 10}, so real traffic mostly carries negative opaques and
    never the C{2147483647} a broker echoes for a C{version} without one.
    """

    def __init__(self, start=INT_MIN):
        self._next = start

    def __call__(self):
        opaque = self._next
        self._next = INT_MIN if opaque >= INT_MAX - 11 else opaque + 1
        return opaque


nextOpaque = OpaqueGenerator()
"""The process-wide opaque counter (gecko's is JVM-wide)."""


def parseBrokerUrl(url):
    """
    Split a broker URL (C{meta://host:port}, IPv6 hosts in brackets) into
    C{(host, port)}.

    @raise ValueError: not a C{meta://} URL with a host and a port.
    """
    parts = urlsplit(url.strip())
    if parts.scheme != "meta" or not parts.hostname or parts.port is None:
        raise ValueError("Invalid broker url %r (expected meta://host:port)" % (url,))
    return parts.hostname, parts.port


def brokerEndpoint(reactor, host, port, timeout, tls=None):
    """
    A client endpoint for a broker address: a plain TCP endpoint for an IP
    address (no resolver round trip on every reconnection), a
    L{HostnameEndpoint} for a name; with TLS on top when C{tls} (a
    L{metamorphosis.tls.ClientTLS}) is given.
    """
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        endpoint = HostnameEndpoint(reactor, host, port, timeout=timeout)
    else:
        if address.version == 6:
            endpoint = TCP6ClientEndpoint(reactor, host, port, timeout=timeout)
        else:
            endpoint = TCP4ClientEndpoint(reactor, host, port, timeout=timeout)
    return endpoint if tls is None else tls.wrap(endpoint, host)


class MetaClientProtocol(MetaProtocol):
    """
    The client end of one broker connection.

    Every request method returns a Deferred that fires with the reply
    command (a C{ResultCommand} or C{ValueCommand}) whatever its status
    code: what a code means is the caller's business (a put's 403 is a
    failed C{SendResult}, a get's 404 is "no data").  The Deferred fails
    with L{MetaTimeoutError} when no reply arrives in time and with
    L{MetaConnectionError} when the connection is lost first.

    @ivar heartbeatInterval: seconds without any read or write after which
        a C{version} heartbeat is sent (gecko's client idle time, 10 s).
    @ivar heartbeatTimeout: how long a heartbeat may take (5 s).
    @ivar maxHeartbeatFailures: consecutive failed heartbeats after which
        the connection is closed (3).
    """

    log = Logger()

    heartbeatInterval = 10.0
    heartbeatTimeout = 5.0
    maxHeartbeatFailures = 3

    def __init__(self, clock=None, opaques=nextOpaque):
        super().__init__()
        if clock is None:
            from twisted.internet import reactor as clock
        self.clock = clock
        self.opaques = opaques
        self._pending = {}
        self._lastActivity = 0.0
        self._idleCall = None
        self._heartbeatFailures = 0
        self.connected = False

    # -- connection lifetime ----------------------------------------------

    def connectionMade(self):
        super().connectionMade()
        self.connected = True
        self._lastActivity = self.clock.seconds()
        if self.factory is not None:
            self.factory.clientConnected(self)
        if self.heartbeatInterval:
            self._idleCall = self.clock.callLater(self.heartbeatInterval, self._checkIdle)

    def connectionLost(self, reason):
        self.connected = False
        if self._idleCall is not None and self._idleCall.active():
            self._idleCall.cancel()
        self._idleCall = None
        pending, self._pending = self._pending, {}
        for deferred, timeoutCall in pending.values():
            if timeoutCall.active():
                timeoutCall.cancel()
            deferred.errback(
                MetaConnectionError(
                    "Connection to %s lost: %s" % (self._peerName(), reason.getErrorMessage())
                )
            )
        super().connectionLost(reason)
        if self.factory is not None:
            self.factory.clientDisconnected(self, reason)

    def _peerName(self):
        try:
            peer = self.transport.getPeer()
            return "%s:%s" % (peer.host, peer.port)
        except AttributeError:
            return "broker"

    # -- requests ---------------------------------------------------------

    def sendRequest(self, command, timeout):
        """
        Send a request command (carrying a fresh opaque, see L{opaques}) and
        wait for the reply with the same opaque.

        @param timeout: seconds.
        @return: a Deferred firing with the reply command.
        """
        if not self.connected:
            return defer.fail(MetaConnectionError("Not connected to %s" % (self._peerName(),)))
        opaque = command.opaque
        if opaque in self._pending:
            return defer.fail(MetaClientError("Opaque %d is already in flight" % (opaque,)))
        deferred = defer.Deferred(lambda d: self._forget(opaque))
        timeoutCall = self.clock.callLater(timeout, self._timedOut, opaque, timeout)
        self._pending[opaque] = (deferred, timeoutCall)
        self._lastActivity = self.clock.seconds()
        self.sendCommand(command)
        return deferred

    def _forget(self, opaque):
        entry = self._pending.pop(opaque, None)
        if entry is not None and entry[1].active():
            entry[1].cancel()

    def _timedOut(self, opaque, timeout):
        entry = self._pending.pop(opaque, None)
        if entry is not None:
            entry[0].errback(
                MetaTimeoutError(
                    "No reply from %s within %d ms (opaque %d)"
                    % (self._peerName(), round(timeout * 1000), opaque)
                )
            )

    def commandReceived(self, command):
        self._lastActivity = self.clock.seconds()
        entry = self._pending.pop(getattr(command, "opaque", None), None)
        if entry is None:
            # gecko drops replies nobody waits for (a timed-out request's).
            self.log.debug("Dropping unexpected reply {command}", command=repr(command))
            return
        deferred, timeoutCall = entry
        timeoutCall.cancel()
        deferred.callback(command)

    def put(self, topic, partition, data, flag, checksum=-1, transactionKey=None, timeout=3.0):
        """
        Publish one encoded payload; 3 s is the Java producer's default
        timeout.
        """
        return self.sendRequest(
            PutCommand(topic, partition, data, flag, self.opaques(), checksum, transactionKey),
            timeout,
        )

    def get(self, topic, group, partition, offset, maxSize, timeout=10.0):
        """
        Fetch from C{offset}; 10 s is the Java consumer's
        C{fetchTimeoutInMills}.
        """
        return self.sendRequest(
            GetCommand(topic, group, partition, offset, maxSize, self.opaques()), timeout
        )

    def offset(self, topic, group, partition, offset, timeout=10.0):
        """
        Ask for a valid offset near C{offset}.
        """
        return self.sendRequest(
            OffsetCommand(topic, group, partition, offset, self.opaques()), timeout
        )

    def stats(self, item=None, timeout=3.0):
        """
        Ask for the statistics C{item} (all by default).
        """
        return self.sendRequest(StatsCommand(item, self.opaques()), timeout)

    def version(self, timeout=5.0):
        """
        Ask for the broker's version; this is also the heartbeat.
        """
        return self.sendRequest(VersionCommand(self.opaques()), timeout)

    def transaction(self, transactionKey, sessionId, type, timeout=5.0, transactionTimeout=0,
                    uniqueQualifier=None):
        """
        Send a transaction control command; 5 s is the Java producer's
        C{transactionRequestTimeout}.
        """
        return self.sendRequest(
            TransactionCommand(
                transactionKey, sessionId, type, self.opaques(), transactionTimeout, uniqueQualifier
            ),
            timeout,
        )

    def quit(self):
        """
        Ask the broker to close the connection (it sends no reply).
        """
        self.sendCommand(QuitCommand())

    # -- heartbeats -------------------------------------------------------

    def _checkIdle(self):
        idle = self.clock.seconds() - self._lastActivity
        if idle >= self.heartbeatInterval:
            self._heartbeat()
            delay = self.heartbeatInterval
        else:
            delay = self.heartbeatInterval - idle
        self._idleCall = self.clock.callLater(delay, self._checkIdle)

    def dataReceived(self, data):
        self._lastActivity = self.clock.seconds()
        super().dataReceived(data)

    def _heartbeat(self):
        def answered(reply):
            if reply.code == OK:
                self._heartbeatFailures = 0
            else:
                failed("status %d" % (reply.code,))

        def failed(why):
            self._heartbeatFailures += 1
            self.log.warn(
                "Heartbeat to {peer} failed ({why}), {n} in a row",
                peer=self._peerName(),
                why=why,
                n=self._heartbeatFailures,
            )
            if self._heartbeatFailures >= self.maxHeartbeatFailures and self.connected:
                self.log.error("Closing connection to {peer}: heartbeats fail", peer=self._peerName())
                self.transport.abortConnection()

        def error(failure):
            if failure.check(MetaTimeoutError):
                failed("timeout")
            elif not failure.check(MetaConnectionError):
                failed(failure.getErrorMessage())

        self.version(self.heartbeatTimeout).addCallbacks(answered, error)


class _BrokerClientFactory(Factory):
    """
    Builds the protocol of one L{BrokerConnection} and tells it when
    connections come and go.
    """

    noisy = False

    def __init__(self, brokerConnection):
        self.brokerConnection = brokerConnection

    def buildProtocol(self, addr):
        connection = self.brokerConnection
        protocol = MetaClientProtocol(connection.clock, connection.opaques)
        protocol.heartbeatInterval = connection.heartbeatInterval
        protocol.factory = self
        return protocol

    def clientConnected(self, protocol):
        self.brokerConnection._clientConnected(protocol)

    def clientDisconnected(self, protocol, reason):
        self.brokerConnection._clientDisconnected(protocol, reason)


class BrokerConnection:
    """
    The one connection to one broker, re-established every
    C{reconnectInterval} seconds after it drops, giving up after
    C{maxReconnectAttempts} failed attempts in a row (until the next request
    asks for it again).

    Requests made while it is down wait for it to come back within their
    own timeout.
    """

    log = Logger()

    def __init__(self, url, reactor, reconnectInterval=2.0, maxReconnectAttempts=350,
                 heartbeatInterval=10.0, opaques=nextOpaque, connectTimeout=10.0,
                 onConnected=None, tls=None):
        self.url = url
        self.clock = reactor
        self.onConnected = onConnected
        self.opaques = opaques
        self.heartbeatInterval = heartbeatInterval
        self.maxReconnectAttempts = maxReconnectAttempts
        host, port = parseBrokerUrl(url)
        endpoint = brokerEndpoint(reactor, host, port, connectTimeout, tls)
        self._service = ClientService(
            endpoint,
            _BrokerClientFactory(self),
            retryPolicy=lambda attempt: reconnectInterval,
            clock=reactor,
        )
        self._protocol = None
        self._waiters = []

    def __repr__(self):
        return "<BrokerConnection %s %s>" % (
            self.url,
            "connected" if self.connected else "disconnected",
        )

    @property
    def connected(self):
        """
        Whether a connection is up right now.
        """
        return self._protocol is not None

    def start(self):
        """
        Start connecting (and keep reconnecting).
        """
        if not self._service.running:
            self._service.startService()
            self._watchForGivingUp()

    def _watchForGivingUp(self):
        self._service.whenConnected(failAfterFailures=self.maxReconnectAttempts).addErrback(
            self._gaveUp
        )

    def _clientConnected(self, protocol):
        self._protocol = protocol
        self.log.info("Connected to {url}", url=self.url)
        # Not from inside connectionMade: a waiter may stop or use the
        # connection at once.
        self.clock.callLater(0, self._wakeWaiters)
        if self.onConnected is not None:
            self.clock.callLater(0, self.onConnected, self.url)

    def _wakeWaiters(self, failure=None):
        if failure is None and self._protocol is None:
            return
        waiters, self._waiters = self._waiters, []
        for waiter, timeoutCall in waiters:
            if timeoutCall.active():
                timeoutCall.cancel()
            if not waiter.called:
                if failure is None:
                    waiter.callback(self._protocol)
                else:
                    waiter.errback(failure)

    def _clientDisconnected(self, protocol, reason):
        if protocol is not self._protocol:
            return
        self._protocol = None
        if self._service.running:
            self.log.warn("Lost connection to {url}: {why}", url=self.url, why=reason.getErrorMessage())
            self._watchForGivingUp()

    def _gaveUp(self, failure):
        if failure.check(defer.CancelledError):
            return
        self.log.error(
            "Giving up connecting to {url} after {n} attempts: {why}",
            url=self.url,
            n=self.maxReconnectAttempts,
            why=failure.getErrorMessage(),
        )
        # Not from inside the ClientService's own state transition.
        self.clock.callLater(0, self._giveUp, failure.getErrorMessage())

    def _giveUp(self, why):
        if self._service.running and not self.connected:
            self._service.stopService()
            self._wakeWaiters(
                Failure(MetaConnectionError("Cannot connect to %s: %s" % (self.url, why)))
            )

    def stop(self):
        """
        Close the connection and stop reconnecting.

        @return: a Deferred that fires once the connection is closed.
        """
        self._wakeWaiters(Failure(MetaConnectionError("Connection to %s closed" % (self.url,))))
        return self._service.stopService() if self._service.running else defer.succeed(None)

    def whenConnected(self, timeout):
        """
        @return: a Deferred firing with the connected L{MetaClientProtocol},
            or failing with L{MetaConnectionError} after C{timeout} seconds.
        """
        if self.connected:
            return defer.succeed(self._protocol)
        self.start()
        waiter = defer.Deferred()

        def timedOut():
            if not waiter.called:
                waiter.errback(
                    MetaConnectionError(
                        "No connection to %s within %d ms" % (self.url, round(timeout * 1000))
                    )
                )

        self._waiters.append((waiter, self.clock.callLater(timeout, timedOut)))
        return waiter

    def request(self, method, *args, timeout, **kwargs):
        """
        Call the request method C{method} (e.g. C{"put"}) of the connection
        with C{timeout}, waiting for the connection first if it is down.

        @return: a Deferred firing with the reply.
        """
        if self.connected:
            return getattr(self._protocol, method)(*args, timeout=timeout, **kwargs)
        started = self.clock.seconds()

        def send(protocol):
            remaining = max(timeout - (self.clock.seconds() - started), 0.001)
            return getattr(protocol, method)(*args, timeout=remaining, **kwargs)

        return self.whenConnected(timeout).addCallback(send)


class ConnectionPool:
    """
    One L{BrokerConnection} per broker URL, shared and reference-counted
    (the Java C{RemotingClientWrapper.connectWithRef/closeWithRef}): a
    connection opens with its first reference and closes with its last.

    @ivar tls: the L{metamorphosis.tls.ClientTLS} every connection uses, or
        L{None} for plain TCP.
    """

    def __init__(self, reactor=None, tls=None, **connectionOptions):
        if reactor is None:
            from twisted.internet import reactor
        self.reactor = reactor
        self.tls = tls
        connectionOptions["tls"] = tls
        self._options = connectionOptions
        self._listeners = []
        self._options["onConnected"] = self._connected
        self._connections = {}
        self._references = {}

    def acquire(self, url, ref):
        """
        Take a reference on the connection to C{url} for C{ref}, opening it
        if needed.

        @return: the L{BrokerConnection}.
        """
        connection = self._connections.get(url)
        if connection is None:
            connection = BrokerConnection(url, self.reactor, **self._options)
            self._connections[url] = connection
            self._references[url] = set()
            connection.start()
        self._references[url].add(ref)
        return connection

    def release(self, url, ref):
        """
        Drop C{ref}'s reference on C{url}; the last one closes the
        connection.

        @return: a Deferred that fires when that is done.
        """
        references = self._references.get(url)
        if references is None:
            return defer.succeed(None)
        references.discard(ref)
        if references:
            return defer.succeed(None)
        del self._references[url]
        return self._connections.pop(url).stop()

    def addConnectedListener(self, listener):
        """
        Call C{listener(url)} whenever a connection of the pool is
        (re-)established.
        """
        self._listeners.append(listener)

    def _connected(self, url):
        for listener in list(self._listeners):
            listener(url)

    def get(self, url):
        """
        @return: the L{BrokerConnection} to C{url}, or L{None} if nobody
            holds one.
        """
        return self._connections.get(url)

    def connection(self, url):
        """
        The connection to C{url} for a one-off user that holds no reference
        (a C{stats} query, a direct-mode producer): it stays open until
        L{close}.
        """
        return self.acquire(url, self)

    def close(self):
        """
        Close every connection.

        @return: a Deferred that fires when they are all closed.
        """
        connections = list(self._connections.values())
        self._connections.clear()
        self._references.clear()
        return defer.gatherResults([c.stop() for c in connections], consumeErrors=True)

"""
A small in-process stand-in for a broker, for producer tests that need a
real socket but not a real store: it parses requests with the codec, checks
put checksums, keeps the puts it accepted and answers as the Java broker
does (docs/protocol.md).  Tests can close partitions (403), make it
silent (timeouts) and stop and restart it on the same port.
"""

from twisted.internet import defer, reactor
from twisted.internet.protocol import Factory

from metamorphosis.protocol import records
from metamorphosis.protocol.commands import (
    PutCommand,
    QuitCommand,
    ResultCommand,
    StatsCommand,
    VersionCommand,
)
from metamorphosis.protocol.framing import MetaProtocol


class FakeBrokerProtocol(MetaProtocol):
    def connectionMade(self):
        super().connectionMade()
        self.factory.clients.append(self)

    def connectionLost(self, reason):
        if self in self.factory.clients:
            self.factory.clients.remove(self)
        super().connectionLost(reason)

    def dataReceived(self, data):
        self.factory.raw += data
        super().dataReceived(data)

    def commandReceived(self, command):
        factory = self.factory
        factory.received.append(command)
        if factory.silent:
            return
        if isinstance(command, PutCommand):
            reply = factory.put(command)
        elif isinstance(command, VersionCommand):
            reply = ResultCommand(200, b"1.4.6.2", command.opaque)
        elif isinstance(command, StatsCommand):
            reply = ResultCommand(200, b"STATS\r\npid 1\r\nuptime 5\r\nEND\r\n", command.opaque)
        elif isinstance(command, QuitCommand):
            self.transport.loseConnection()
            return
        else:
            reply = ResultCommand(503, b"no processor", command.opaque)
        self.sendCommand(reply)


class FakeBroker(Factory):
    """
    @ivar partitions: the number of partitions of every topic.
    @ivar stored: (topic, partition, offset, msgId, flag, body) of every
        accepted put, in order.
    @ivar raw: every byte received, from all connections.
    """

    protocol = FakeBrokerProtocol

    def __init__(self, brokerId=0, partitions=4):
        self.brokerId = brokerId
        self.partitions = partitions
        self.clients = []
        self.received = []
        self.raw = b""
        self.stored = []
        self.closedPartitions = set()
        self.silent = False
        self._offsets = {}
        self._nextId = -5468572396564774912
        self.port = None

    @property
    def url(self):
        return "meta://127.0.0.1:%d" % (self.portNumber,)

    def listen(self, portNumber=0):
        self.port = reactor.listenTCP(portNumber, self, interface="127.0.0.1")
        self.portNumber = self.port.getHost().port
        return self

    @defer.inlineCallbacks
    def stop(self):
        """
        Stop listening and drop every client.
        """
        if self.port is not None:
            yield self.port.stopListening()
        for client in list(self.clients):
            client.transport.abortConnection()
        yield defer.succeed(None)

    def put(self, command):
        if command.partition in self.closedPartitions:
            return ResultCommand(
                403,
                b"Put message to [broker 'meta://fake'] [partition 'x'] failed."
                b"Detail:partition[0-0] has been closed",
                command.opaque,
            )
        partition = command.partition
        if partition == -1:
            partition = len(self.stored) % self.partitions
        if not 0 <= partition < self.partitions:
            return ResultCommand(500, b"failed.Detail:wrong partition %d" % partition, command.opaque)
        if command.checksum != -1 and command.checksum != records.checksum(command.data):
            return ResultCommand(500, b"failed.Detail:Checksum failure", command.opaque)
        key = (command.topic, partition)
        offset = self._offsets.get(key, 0)
        self._offsets[key] = offset + records.HEADER_SIZE + len(command.data)
        msgId = self._nextId
        self._nextId += 1 << 22
        self.stored.append((command.topic, partition, offset, msgId, command.flag, command.data))
        body = ("%d %d %d" % (msgId, partition, offset)).encode()
        return ResultCommand(200, body, command.opaque)

    def payloads(self, topic=None, partition=None):
        return [
            records.decodePayload(body, flag)[0]
            for t, p, offset, msgId, flag, body in self.stored
            if (topic is None or t == topic) and (partition is None or p == partition)
        ]

"""
A minimal MetaQ client for broker tests over real sockets: it sends raw
request bytes and matches replies to requests by opaque.
"""

from twisted.internet import defer, endpoints, protocol

from metamorphosis.protocol.commands import CommandParser
from metamorphosis.protocol.records import checksum


class RawClient(protocol.Protocol):
    def __init__(self):
        self.parser = CommandParser()
        self.waiting = {}
        self.closed = defer.Deferred()

    def dataReceived(self, data):
        for reply in self.parser.parse(data):
            waiting = self.waiting.pop(reply.opaque, None)
            if waiting is not None:
                waiting.callback(reply)

    def connectionLost(self, reason):
        for d in self.waiting.values():
            d.errback(reason)
        self.waiting.clear()
        self.closed.callback(None)

    def expect(self, opaque):
        d = self.waiting[opaque] = defer.Deferred()
        return d

    def request(self, data, opaque):
        d = self.expect(opaque)
        self.transport.write(data)
        return d

    def put(self, topic, partition, payload, opaque):
        return self.request(b"put %s %d %d 0 %d %d\r\n%s" % (
            topic.encode(), partition, len(payload), checksum(payload), opaque, payload), opaque)

    def get(self, topic, group, partition, offset, maxSize, opaque):
        return self.request(b"get %s %s %d %d %d %d\r\n" % (
            topic.encode(), group.encode(), partition, offset, maxSize, opaque), opaque)


def connect(reactor, port, source=None):
    """
    Connect a L{RawClient} to 127.0.0.1:C{port}, from the loopback address
    C{source} when given (another host, as the broker sees it).
    """
    bindAddress = None if source is None else (source, 0)
    endpoint = endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", port,
                                            bindAddress=bindAddress)
    return endpoints.connectProtocol(endpoint, RawClient())

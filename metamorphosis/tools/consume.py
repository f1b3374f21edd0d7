"""
C{metaq consume}: a console consumer.  The messages of a topic go to
stdout, one per line (like C{kafka-console-consumer}).

    metaq -z zk:2181 consume --topic t --from-beginning
    metaq -b 127.0.0.1:8123 consume --topic t --partitions 2 --max-messages 10
    metaq -z zk:2181 consume --topic t --from-beginning --exit-at-end > all.txt

It reads every master partition of the topic (or the one of
C{--partition}) with one-shot C{get}s under the group C{--group} (by
default C{metaq-console}), from the end of each partition (or from its
start with C{--from-beginning}), and follows them until C{--max-messages},
until every partition is read to its end (C{--exit-at-end}), or Ctrl-C.
It joins no group and stores no offset: a consumer group that uses the
same name is not disturbed.
"""

import sys

from twisted.internet import threads
from twisted.internet.task import deferLater
from twisted.python import usage

from metamorphosis.client.errors import MetaClientError
from metamorphosis.client.partition import Partition
from metamorphosis.protocol.commands import ValueCommand
from metamorphosis.protocol.records import InvalidRecord, iterRecords
from metamorphosis.protocol.status import MOVED, OK
from metamorphosis.tools.cli import (
    Progress,
    ToolError,
    Verbosity,
    checkBrokerSource,
    inheritShared,
    openBroker,
    openZooKeeper,
)
from metamorphosis.tools.offsets import LONG_MAX
from metamorphosis.tools.topics import readCluster
from metamorphosis.zk import disconnect, normalizeRoot

MAX_GET_SIZE = 64 * 1024 * 1024


class Options(Verbosity, usage.Options):
    synopsis = "--topic TOPIC (--zookeeper HOST:PORT | --broker HOST:PORT) [options]"
    longdesc = "Print the messages of a topic on stdout, one per line."
    optFlags = [
        ["from-beginning", None, "start at the start of each partition (default: its end)"],
        ["exit-at-end", None, "stop once every partition is read to its end"],
        ["print-offsets", None, "start each line with the partition and the message's offset"],
    ]
    optParameters = [
        ["topic", None, None, "the topic (required)"],
        ["zookeeper", "z", None, "find the topic's partitions in this ZooKeeper"],
        ["zk-root", None, "/meta", "MetaQ's root znode"],
        ["broker", "b", None, "read this broker directly"],
        ["partitions", None, 1, "with --broker: the topic's number of partitions", int],
        ["partition", "p", None, "only this partition, <brokerId>-<partition>"],
        ["group", "g", "metaq-console", "the group named in the gets (no offset is stored)"],
        ["max-messages", "n", None, "stop after N messages", int],
        ["max-size", None, 1024 * 1024, "bytes asked for in one get", int],
        ["interval", None, 0.5, "seconds between polls of a partition at its end", float],
        ["timeout", "t", 10.0, "seconds to wait for ZooKeeper, each broker and each get",
         float],
    ]

    def postOptions(self):
        inheritShared(self)
        if not self["topic"]:
            raise usage.UsageError("--topic is required")
        checkBrokerSource(self)
        if self["partition"] is not None:
            try:
                self["partition"] = Partition.fromString(self["partition"])
            except ValueError:
                raise usage.UsageError("--partition must be <brokerId>-<partition>")
        if self["max-messages"] is not None and self["max-messages"] < 1:
            raise usage.UsageError("--max-messages must be at least 1")
        self["zk-root"] = normalizeRoot(self["zk-root"])


async def topicPartitions(reactor, options):
    """
    C{[(Partition, master URL)]} of the topic, in order.
    """
    if options["broker"]:
        return [(Partition(0, n), options["broker"]) for n in range(options["partitions"])]
    zookeeper = await openZooKeeper(reactor, options["zookeeper"], options["timeout"])
    try:
        cluster = await threads.deferToThread(readCluster, zookeeper, options["zk-root"])
    finally:
        await disconnect(zookeeper, reactor)
    found = []
    for name, count in cluster.topics.get(options["topic"], {}).items():
        brokerId, _, role = name.partition("-")
        if role == "m" and int(brokerId) in cluster.masters:
            found += [(Partition(int(brokerId), n), cluster.masters[int(brokerId)])
                      for n in range(count)]
    if not found:
        raise ToolError("no broker announces the topic %r" % (options["topic"],))
    return sorted(found)


class PartitionReader:
    """
    Reads one partition from an offset on.
    """

    def __init__(self, broker, options, partition):
        self.broker = broker
        self.options = options
        self.partition = partition
        self.offset = None
        self.maxSize = options["max-size"]

    async def _ask(self, method, *args):
        try:
            return await method(self.options["topic"], self.options["group"],
                                self.partition.partition, *args, timeout=self.options["timeout"])
        except MetaClientError as e:
            raise ToolError("%s %s: %s" % (self.options["topic"], self.partition, e))

    async def start(self):
        reply = await self._ask(self.broker.offset,
                                0 if self.options["from-beginning"] else LONG_MAX)
        self.offset = int(reply.body) if reply.code == OK else 0

    async def next(self):
        """
        The next messages: a list of C{(offset, data)}, empty at the end.
        """
        while True:
            reply = await self._ask(self.broker.get, self.offset, self.maxSize)
            if not isinstance(reply, ValueCommand):
                if reply.code == MOVED:
                    self.offset = int(reply.body)
                    continue
                return []
            messages, position = [], 0
            try:
                for record, end in iterRecords(reply.data):
                    messages.append((self.offset + position, record.data))
                    position = end
            except InvalidRecord as e:
                raise ToolError("%s %s at %d: %s" % (self.options["topic"], self.partition,
                                                     self.offset + position, e))
            if not messages:
                if self.maxSize >= MAX_GET_SIZE:
                    raise ToolError("a message of %s %s at %d is larger than %d bytes"
                                    % (self.options["topic"], self.partition, self.offset,
                                       MAX_GET_SIZE))
                self.maxSize *= 2
                continue
            self.offset += position
            return messages


async def main(reactor, options, out=None, err=None):
    out = out or sys.stdout.buffer
    err = err or sys.stderr
    partitions = await topicPartitions(reactor, options)
    if options["partition"] is not None:
        partitions = [(p, url) for p, url in partitions if p == options["partition"]]
        if not partitions:
            raise ToolError("the topic %r has no partition %s" % (options["topic"],
                                                                   options["partition"]))
    connections = {}
    progress = None
    readers = []
    try:
        for partition, url in partitions:
            if url not in connections:
                connections[url] = await openBroker(reactor, url, options["timeout"])
            reader = PartitionReader(connections[url], options, partition)
            await reader.start()
            readers.append(reader)
        # Progress only when the messages do not go to the terminal.
        progress = Progress("messages", err, options) if not _isTerminal(out) else None
        count, limit = 0, options["max-messages"]
        while True:
            idle = True
            for reader in readers:
                for offset, data in await reader.next():
                    idle = False
                    if options["print-offsets"]:
                        out.write(b"%s %d " % (str(reader.partition).encode("ascii"), offset))
                    out.write(data + b"\n")
                    count += 1
                    if progress is not None:
                        progress.add()
                    if count == limit:
                        return 0
            out.flush()
            if idle:
                if options["exit-at-end"]:
                    return 0
                await deferLater(reactor, options["interval"], lambda: None)
    finally:
        if progress is not None:
            progress.done()
        out.flush()
        for connection in connections.values():
            connection.transport.loseConnection()


def _isTerminal(stream):
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False

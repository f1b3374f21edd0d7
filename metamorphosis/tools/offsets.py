"""
Inspect a consumer group: per topic and partition the offset committed in
the group's offset storage, the broker's max offset, the lag in bytes and
the consumer owning the partition; or reset one committed offset while no
consumer of the group is alive.

    python -m metamorphosis.tools.offsets --zookeeper 127.0.0.1:2181 --group g
    python -m metamorphosis.tools.offsets --zookeeper ... --group g \\
        --topic t --partition 0-1 --set 0
    python -m metamorphosis.tools.offsets --broker meta://127.0.0.1:8123 \\
        --partitions 2 --topic t --group g --offsets-file ~/.meta_offsets

Where things are in ZooKeeper: docs/zookeeper.md.  The max
offset comes from each partition's master broker as Java consumers learn it:
C{offset <topic> <group> <partition> 9223372036854775807} is answered with
the partition's max offset (docs/protocol.md).
"""

import json
import sys
from dataclasses import dataclass, field
from datetime import datetime
from urllib.parse import urlencode

from kazoo.exceptions import NoNodeError
from twisted.internet import threads
from twisted.python import usage
from twisted.web.client import Agent, readBody

from metamorphosis.client.connection import parseBrokerUrl
from metamorphosis.client.errors import MetaClientError
from metamorphosis.client.offsets import (
    LocalOffsetStorage,
    PartitionOffset,
    SQLOffsetStorage,
    ZooKeeperOffsetStorage,
)
from metamorphosis.client.partition import Partition
from metamorphosis.protocol.commands import ValueCommand
from metamorphosis.protocol.records import InvalidRecord, iterRecords
from metamorphosis.protocol.status import OK
from metamorphosis.tools.cli import (
    Progress,
    ToolError,
    Verbosity,
    checkBrokerSource,
    inheritShared,
    openBroker,
    openZooKeeper,
    runAlias,
    table,
)
from metamorphosis.zk import disconnect, normalizeRoot

LONG_MAX = 2**63 - 1

#: The largest get made while walking messages (a message can be up to the
#: broker's maxTransferSize).
MAX_GET_SIZE = 64 * 1024 * 1024


class Options(Verbosity, usage.Options):
    synopsis = "(--zookeeper HOST:PORT | --broker URL --topic TOPIC) --group GROUP [options]"
    optParameters = [
        ["zookeeper", "z", None, "ZooKeeper host:port[,host:port...]"],
        ["zk-root", None, "/meta", "MetaQ's root znode"],
        ["broker", "b", None, "without ZooKeeper: the one broker of --topic (meta://host:port), "
                              "with --offsets-file or --offsets-url"],
        ["partitions", None, 1, "with --broker: the topic's number of partitions", int],
        ["group", "g", None, "the consumer group (required)"],
        ["topic", "t", None, "only this topic (required to reset)"],
        ["partition", "p", None, "only this partition, <brokerId>-<partition> (default "
                                 "when resetting: every partition of --topic)"],
        ["reset-to", None, None, "reset the committed offsets of --topic (or --partition) to "
                                 "earliest, latest, a byte offset that starts a message, or a "
                                 "time (ISO 8601: 2026-12-04T06:00:00+00:00; asked of the "
                                 "brokers' HTTP endpoint); refused while a consumer of the "
                                 "group is alive"],
        ["http-port", None, 8120, "with --reset-to TIME: the brokers' HTTP port "
                                  "(dashboardHttpPort)", int],
        ["shift", None, None, "move the committed offsets of --topic (or --partition) by N "
                              "messages (negative: back), within the partition; refused "
                              "while a consumer of the group is alive", int],
        ["set", None, None, "the same as --reset-to OFFSET (its old name)", int],
        ["offsets-file", None, None, "the group's offsets are in this local offset file "
                                     "(LocalOffsetStorage) instead of ZooKeeper"],
        ["offsets-url", None, None, "the group's offsets are in this SQL database "
                                    "(sqlite:///f.db, mysql://..., postgresql://...)"],
        ["timeout", None, 10.0, "seconds to wait for ZooKeeper and each broker", float],
    ]

    def postOptions(self):
        inheritShared(self)
        if self["set"] is not None:
            if self["reset-to"] is not None:
                raise usage.UsageError("--set and --reset-to exclude each other")
            self["reset-to"] = str(self["set"])
        resetting = self["reset-to"] is not None or self["shift"] is not None
        if self["reset-to"] is not None and self["shift"] is not None:
            raise usage.UsageError("--reset-to and --shift exclude each other")
        if self["reset-to"] not in (None, "earliest", "latest"):
            self["reset-to"] = parseResetTarget(self["reset-to"])
        if not self["group"]:
            raise usage.UsageError("--group is required")
        checkBrokerSource(self)
        if self["broker"]:
            if not self["topic"]:
                raise usage.UsageError("--broker needs --topic")
            if not (self["offsets-file"] or self["offsets-url"]):
                raise usage.UsageError("--broker needs --offsets-file or --offsets-url")
            if resetting:
                raise usage.UsageError("resetting needs --zookeeper, to know that no "
                                       "consumer of the group is alive")
            if self["partitions"] < 1:
                raise usage.UsageError("--partitions must be at least 1")
        if self["offsets-file"] and self["offsets-url"]:
            raise usage.UsageError("--offsets-file and --offsets-url exclude each other")
        if resetting and not self["topic"]:
            raise usage.UsageError("resetting needs --topic")
        if isinstance(self["reset-to"], int) and self["partition"] is None:
            raise usage.UsageError("--reset-to OFFSET needs --partition")
        if self["partition"] is not None:
            try:
                self["partition"] = Partition.fromString(self["partition"])
            except ValueError:
                raise usage.UsageError("--partition must be <brokerId>-<partition>, not %r"
                                       % (self["partition"],))
        self["zk-root"] = normalizeRoot(self["zk-root"])


@dataclass(frozen=True)
class AtTime:
    """
    A reset to a time: seconds since the epoch.
    """

    seconds: float


def parseResetTarget(text):
    """
    The value of C{--reset-to} other than earliest and latest: a byte
    offset, or an L{AtTime} for an ISO 8601 time (local time without a
    zone).

    @raise usage.UsageError: neither.
    """
    try:
        offset = int(text)
    except ValueError:
        try:
            return AtTime(datetime.fromisoformat(text).timestamp())
        except ValueError:
            raise usage.UsageError("--reset-to takes earliest, latest, a byte offset or an "
                                   "ISO 8601 time, not %r" % (text,))
    if offset < 0:
        raise usage.UsageError("--reset-to needs a non-negative offset")
    return offset


@dataclass
class GroupView:
    """
    A group and the brokers of its topics as ZooKeeper shows them.

    @ivar exists: whether C{consumers/<group>} exists.
    @ivar consumers: the ids of the live consumers.
    @ivar partitions: topic -> sorted partitions (from the brokers, and any
        partition the group has an offset or an owner for).
    @ivar owners: (topic, partition) -> consumer id.
    @ivar masters: broker id -> master URL.
    """

    exists: bool = False
    consumers: list = field(default_factory=list)
    partitions: dict = field(default_factory=dict)
    owners: dict = field(default_factory=dict)
    masters: dict = field(default_factory=dict)


def readGroup(client, root, group, topic=None):
    """
    Read a L{GroupView} from ZooKeeper (blocking: call it in a thread).
    """

    def children(path):
        try:
            return client.get_children(path)
        except NoNodeError:
            return []

    def data(path):
        try:
            value, _ = client.get(path)
        except NoNodeError:
            return None
        return value.decode("utf-8") if value else None

    def partitions(path):
        for name in children(path):
            try:
                yield name, Partition.fromString(name)
            except ValueError:
                continue

    view = GroupView()
    groupPath = "%s/consumers/%s" % (root, group)
    view.exists = client.exists(groupPath) is not None
    view.consumers = sorted(children(groupPath + "/ids"))
    if topic is not None:
        topics = {topic}
    else:
        topics = set(children(groupPath + "/offsets")) | set(children(groupPath + "/owners"))
        for consumer in view.consumers:
            topics.update(t for t in (data("%s/ids/%s" % (groupPath, consumer)) or "").split(",")
                          if t)
    for child in children("%s/brokers/ids" % (root,)):
        url = data("%s/brokers/ids/%s/master" % (root, child))
        if url and child.isdigit():
            view.masters[int(child)] = url
    for name in topics:
        found = set()
        subPath = "%s/brokers/topics-sub/%s" % (root, name)
        for node in children(subPath):
            brokerId, _, role = node.partition("-")
            if role != "m" or not brokerId.isdigit():
                continue
            try:
                count = int(json.loads(data("%s/%s" % (subPath, node)) or "")["numParts"])
            except (ValueError, KeyError, TypeError):
                continue
            found.update(Partition(int(brokerId), n) for n in range(count))
        found.update(p for _, p in partitions("%s/offsets/%s" % (groupPath, name)))
        for text, partition in partitions("%s/owners/%s" % (groupPath, name)):
            found.add(partition)
            view.owners[(name, partition)] = data("%s/owners/%s/%s" % (groupPath, name, text))
        view.partitions[name] = sorted(found)
    return view


def offsetStorage(options, zookeeper):
    """
    The group's L{IOffsetStorage}, as its consumers configure it.
    """
    if options["offsets-file"]:
        return LocalOffsetStorage(options["offsets-file"])
    if options["offsets-url"]:
        try:
            return SQLOffsetStorage.fromURL(options["offsets-url"])
        except Exception as e:
            raise ToolError("bad --offsets-url: %s" % (e,))
    return ZooKeeperOffsetStorage(zookeeper, options["zk-root"])


class Brokers:
    """
    The partitions' master brokers, one connection per broker, opened
    when first needed; an unreachable broker gives L{None}s and one
    warning.
    """

    def __init__(self, reactor, masters, timeout, err):
        self.reactor = reactor
        self.masters = masters
        self.timeout = timeout
        self.err = err
        self._brokers = {}

    async def broker(self, brokerId):
        url = self.masters.get(brokerId)
        if url is None:
            return None
        if brokerId not in self._brokers:
            try:
                self._brokers[brokerId] = await openBroker(self.reactor, url, self.timeout)
            except ToolError as e:
                print("warning: %s" % (e,), file=self.err)
                self._brokers[brokerId] = None
        return self._brokers[brokerId]

    async def validOffset(self, topic, group, partition, offset):
        """
        The broker's answer to C{offset}: the start of the segment holding
        C{offset}, the partition's first offset below it, its end offset
        above it; L{None} when the broker cannot tell.
        """
        broker = await self.broker(partition.brokerId)
        if broker is None:
            return None
        try:
            reply = await broker.offset(topic, group, partition.partition, offset,
                                        timeout=self.timeout)
        except MetaClientError as e:
            print("warning: %s %s: %s" % (topic, partition, e), file=self.err)
            return None
        if reply.code != OK:
            return None
        return int(reply.body)

    def maxOffset(self, topic, group, partition):
        return self.validOffset(topic, group, partition, LONG_MAX)

    async def messageEnds(self, topic, group, partition, start, progress=None):
        """
        Walk the messages of a partition from C{start} (where a message
        starts) to its end: yields the offset where each one ends.
        """
        broker = await self.broker(partition.brokerId)
        if broker is None:
            raise ToolError("broker %d of %s %s cannot be reached"
                            % (partition.brokerId, topic, partition))
        offset, maxSize = start, 1024 * 1024
        while True:
            try:
                reply = await broker.get(topic, group, partition.partition, offset, maxSize,
                                         timeout=self.timeout)
            except MetaClientError as e:
                raise ToolError("reading %s %s at %d: %s" % (topic, partition, offset, e))
            if not isinstance(reply, ValueCommand):
                return
            try:
                records = list(iterRecords(reply.data))
            except InvalidRecord:
                raise ToolError("%s %s: no message starts at offset %d" % (topic, partition, start))
            if not records:
                if maxSize >= MAX_GET_SIZE:
                    raise ToolError("%s %s: a message at offset %d is larger than %d bytes"
                                    % (topic, partition, offset, MAX_GET_SIZE))
                maxSize *= 2
                continue
            for _, end in records:
                yield offset + end
            if progress is not None:
                progress.add(len(records))
            offset += records[-1][1]

    async def offsetForTime(self, topic, partition, seconds, httpPort):
        """
        Ask the HTTP endpoint of the partition's broker where what was
        written at or after C{seconds} starts (C{/offsets.json}).
        """
        url = self.masters.get(partition.brokerId)
        if url is None:
            raise ToolError("no master of %s %s" % (topic, partition))
        host, _ = parseBrokerUrl(url)
        address = "http://%s:%d/offsets.json?%s" % (host, httpPort, urlencode({
            "topic": topic, "partition": partition.partition, "time": int(seconds * 1000)}))
        try:
            response = await Agent(self.reactor, connectTimeout=self.timeout).request(
                b"GET", address.encode("ascii"))
            body = json.loads(await readBody(response))
        except Exception as e:
            raise ToolError("cannot ask %s: %s (is the broker's HTTP endpoint on port %d?)"
                            % (address, e, httpPort))
        if response.code != 200:
            raise ToolError("%s answered %d: %s" % (address, response.code, body.get("error")))
        return body["offset"]

    def close(self):
        for broker in self._brokers.values():
            if broker is not None:
                broker.transport.loseConnection()


def _column(value):
    return "-" if value is None else str(value)


async def listOffsets(reactor, options, view, storage, out, err):
    group = options["group"]
    brokers = Brokers(reactor, view.masters, options["timeout"], err)
    rows = []
    try:
        for topic, partitions in sorted(view.partitions.items()):
            for partition in partitions:
                committed = await storage.load(topic, group, partition)
                committed = None if committed is None else committed.offset
                maximum = await brokers.maxOffset(topic, group, partition)
                lag = None if None in (committed, maximum) else maximum - committed
                rows.append((topic, str(partition), _column(committed), _column(maximum),
                             _column(lag), view.owners.get((topic, partition)) or "-"))
    finally:
        brokers.close()
    if not view.exists and all(row[2] == "-" for row in rows):
        raise ToolError("unknown group %r: no consumer registered and no committed offset"
                        % (group,))
    table(out, ("TOPIC", "PARTITION", "COMMITTED", "MAX", "LAG", "OWNER"), rows)
    print("consumers alive: %d%s" % (len(view.consumers), "".join(
        "\n  " + c for c in view.consumers)), file=out)
    return 0


async def resetTarget(brokers, options, committed, partition, progress):
    """
    Where C{--reset-to} or C{--shift} moves one partition's committed
    offset (C{committed}, L{None} if there is none).

    @raise ToolError: the broker cannot tell, or the offset asked for is
        beyond the partition or not where a message starts.
    """
    topic, group, target = options["topic"], options["group"], options["reset-to"]
    minimum = await brokers.validOffset(topic, group, partition, 0)
    maximum = await brokers.maxOffset(topic, group, partition)
    if minimum is None or maximum is None:
        raise ToolError("the broker of %s %s does not know the partition (no message "
                        "put yet?) or cannot be reached" % (topic, partition))
    if target == "earliest":
        return minimum
    if target == "latest":
        return maximum
    if isinstance(target, AtTime):
        return await brokers.offsetForTime(topic, partition, target.seconds, options["http-port"])
    if target is not None:
        if not minimum <= target <= maximum:
            raise ToolError("%d is beyond the max offset %d of %s %s" % (target, maximum, topic, partition)
                            if target > maximum else
                            "%d is before the first offset %d of %s %s" % (target, minimum, topic, partition))
        segment = await brokers.validOffset(topic, group, partition, target)
        if target in (segment, maximum):
            return target
        previous = segment
        async for end in brokers.messageEnds(topic, group, partition, segment, progress):
            if end == target:
                return target
            if end > target:
                raise ToolError("no message of %s %s starts at %d: the nearest start at %d "
                                "and %d" % (topic, partition, target, previous, end))
            previous = end
        raise ToolError("no message of %s %s starts at %d" % (topic, partition, target))
    shift = options["shift"]
    start = minimum if committed is None else min(max(committed, minimum), maximum)
    if shift >= 0:
        moved = 0
        if moved == shift:
            return start
        async for end in brokers.messageEnds(topic, group, partition, start, progress):
            moved += 1
            if moved == shift:
                return end
        return maximum
    # Back: the message starts from the segment holding the offset, then
    # from the segments before it, until enough are behind.
    wanted, upTo = -shift, start
    while upTo > minimum:
        segment = await brokers.validOffset(topic, group, partition, upTo - 1)
        starts = [segment]
        async for end in brokers.messageEnds(topic, group, partition, segment, progress):
            if end >= upTo:
                break
            starts.append(end)
        if len(starts) >= wanted:
            return starts[-wanted]
        wanted -= len(starts)
        upTo = segment
    return minimum


async def resetOffsets(reactor, options, view, storage, out, err):
    if view.consumers:
        raise ToolError("refusing to set the offset: %d consumer(s) of group %r alive (%s); "
                        "stop them first" % (len(view.consumers), options["group"],
                                            ", ".join(view.consumers)))
    topic, group = options["topic"], options["group"]
    partitions = ([options["partition"]] if options["partition"] is not None
                  else view.partitions.get(topic, []))
    if not partitions:
        raise ToolError("no partition of topic %r is known (no broker announces it)" % (topic,))
    brokers = Brokers(reactor, view.masters, options["timeout"], err)
    progress = Progress("messages read", err, options)
    moves = []
    try:
        for partition in partitions:
            committed = await storage.load(topic, group, partition)
            committed = None if committed is None else committed.offset
            target = await resetTarget(brokers, options, committed, partition, progress)
            moves.append((partition, committed, target))
    except ToolError as e:
        raise ToolError("refusing to set the offset: %s" % (e,))
    finally:
        progress.done()
        brokers.close()
    # Every target is known before anything is written.
    await storage.commitOffset(group, [PartitionOffset(topic, partition, target, -1, modified=True)
                                       for partition, _, target in moves])
    for partition, committed, target in moves:
        print("%s %s %s: committed offset set to %d (was %s)"
              % (group, topic, partition, target, _column(committed)), file=out)
    return 0


def directView(options):
    """
    The L{GroupView} of direct mode: the partitions of the one broker.
    """
    partitions = [Partition(0, n) for n in range(options["partitions"])]
    return GroupView(partitions={options["topic"]: partitions}, masters={0: options["broker"]})


async def main(reactor, options, out=None, err=None):
    out, err = out or sys.stdout, err or sys.stderr
    zookeeper = storage = None
    if options["zookeeper"]:
        zookeeper = await openZooKeeper(reactor, options["zookeeper"], options["timeout"])
    try:
        if zookeeper is None:
            view = directView(options)
        else:
            view = await threads.deferToThread(
                readGroup, zookeeper, options["zk-root"], options["group"], options["topic"])
        storage = offsetStorage(options, zookeeper)
        if options["reset-to"] is not None or options["shift"] is not None:
            return await resetOffsets(reactor, options, view, storage, out, err)
        return await listOffsets(reactor, options, view, storage, out, err)
    finally:
        if storage is not None:
            await storage.close()
        if zookeeper is not None:
            await disconnect(zookeeper, reactor)


def run(argv=None):
    runAlias("metaq-offsets", "offsets", Options(), main, argv)


if __name__ == "__main__":
    run()

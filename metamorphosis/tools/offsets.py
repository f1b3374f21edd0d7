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

Where things are in ZooKeeper: spec/zookeeper.md sections 3 and 6.  The max
offset comes from each partition's master broker as Java consumers learn it:
C{offset <topic> <group> <partition> 9223372036854775807} is answered with
the partition's max offset (protocol.md section 6.4).
"""

import json
import sys
from dataclasses import dataclass, field

from kazoo.exceptions import NoNodeError
from twisted.internet import threads
from twisted.python import usage

from metamorphosis.client.errors import MetaClientError
from metamorphosis.client.offsets import (
    LocalOffsetStorage,
    PartitionOffset,
    SQLOffsetStorage,
    ZooKeeperOffsetStorage,
)
from metamorphosis.client.partition import Partition
from metamorphosis.tools.cli import (
    ToolError,
    Verbosity,
    brokerUrl,
    inheritShared,
    openBroker,
    openZooKeeper,
    runAlias,
)
from metamorphosis.zk import disconnect, normalizeRoot

LONG_MAX = 2**63 - 1


class Options(Verbosity, usage.Options):
    synopsis = "(--zookeeper HOST:PORT | --broker URL --topic TOPIC) --group GROUP [options]"
    optParameters = [
        ["zookeeper", "z", None, "ZooKeeper host:port[,host:port...]"],
        ["zk-root", None, "/meta", "MetaQ's root znode"],
        ["broker", "b", None, "without ZooKeeper: the one broker of --topic (meta://host:port), "
                              "with --offsets-file or --offsets-url"],
        ["partitions", None, 1, "with --broker: the topic's number of partitions", int],
        ["group", "g", None, "the consumer group (required)"],
        ["topic", "t", None, "only this topic (required with --set)"],
        ["partition", "p", None, "with --set: the partition, <brokerId>-<partition>"],
        ["set", None, None, "reset the committed offset of --topic/--partition to this "
                            "byte offset (refused while a consumer of the group is alive)",
         int],
        ["offsets-file", None, None, "the group's offsets are in this local offset file "
                                     "(LocalOffsetStorage) instead of ZooKeeper"],
        ["offsets-url", None, None, "the group's offsets are in this SQL database "
                                    "(sqlite:///f.db, mysql://..., postgresql://...)"],
        ["timeout", None, 10.0, "seconds to wait for ZooKeeper and each broker", float],
    ]

    def postOptions(self):
        inheritShared(self)
        if not self["group"]:
            raise usage.UsageError("--group is required")
        if bool(self["zookeeper"]) == bool(self["broker"]):
            raise usage.UsageError("give one of --zookeeper and --broker")
        if self["broker"]:
            self["broker"] = brokerUrl(self["broker"])
            if not self["topic"]:
                raise usage.UsageError("--broker needs --topic")
            if not (self["offsets-file"] or self["offsets-url"]):
                raise usage.UsageError("--broker needs --offsets-file or --offsets-url")
            if self["set"] is not None:
                raise usage.UsageError("--set needs --zookeeper, to know that no consumer "
                                       "of the group is alive")
            if self["partitions"] < 1:
                raise usage.UsageError("--partitions must be at least 1")
        if self["offsets-file"] and self["offsets-url"]:
            raise usage.UsageError("--offsets-file and --offsets-url exclude each other")
        if self["set"] is not None:
            if not (self["topic"] and self["partition"]):
                raise usage.UsageError("--set needs --topic and --partition")
            if self["set"] < 0:
                raise usage.UsageError("--set needs a non-negative offset")
        if self["partition"] is not None:
            try:
                self["partition"] = Partition.fromString(self["partition"])
            except ValueError:
                raise usage.UsageError("--partition must be <brokerId>-<partition>, not %r"
                                       % (self["partition"],))
        self["zk-root"] = normalizeRoot(self["zk-root"])


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


class MaxOffsets:
    """
    Max offsets asked of the brokers, one connection per broker, opened
    when first needed; an unreachable broker gives L{None}s and one
    warning.
    """

    def __init__(self, reactor, masters, timeout, err):
        self.reactor = reactor
        self.masters = masters
        self.timeout = timeout
        self.err = err
        self._brokers = {}

    async def _broker(self, brokerId):
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

    async def maxOffset(self, topic, group, partition):
        broker = await self._broker(partition.brokerId)
        if broker is None:
            return None
        try:
            reply = await broker.offset(topic, group, partition.partition, LONG_MAX,
                                        timeout=self.timeout)
        except MetaClientError as e:
            print("warning: %s %s: %s" % (topic, partition, e), file=self.err)
            return None
        if reply.code != 200:
            return None
        return int(reply.body)

    def close(self):
        for broker in self._brokers.values():
            if broker is not None:
                broker.transport.loseConnection()


def _column(value):
    return "-" if value is None else str(value)


async def listOffsets(reactor, options, view, storage, out, err):
    group = options["group"]
    brokers = MaxOffsets(reactor, view.masters, options["timeout"], err)
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
    header = ("TOPIC", "PARTITION", "COMMITTED", "MAX", "LAG", "OWNER")
    widths = [max(len(r[i]) for r in rows + [header]) for i in range(len(header) - 1)]
    for row in [header] + rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)) + "  " + row[-1], file=out)
    print("consumers alive: %d%s" % (len(view.consumers), "".join(
        "\n  " + c for c in view.consumers)), file=out)
    return 0


async def setOffset(reactor, options, view, storage, out, err):
    if view.consumers:
        raise ToolError("refusing to set the offset: %d consumer(s) of group %r alive (%s); "
                        "stop them first" % (len(view.consumers), options["group"],
                                            ", ".join(view.consumers)))
    topic, partition = options["topic"], options["partition"]
    brokers = MaxOffsets(reactor, view.masters, options["timeout"], err)
    try:
        maximum = await brokers.maxOffset(topic, options["group"], partition)
    finally:
        brokers.close()
    if maximum is not None and options["set"] > maximum:
        raise ToolError("refusing to set the offset: %d is beyond the max offset %d of %s %s"
                        % (options["set"], maximum, topic, partition))
    offset = PartitionOffset(topic, partition, options["set"], -1, modified=True)
    await storage.commitOffset(options["group"], [offset])
    print("%s %s %s: committed offset set to %d"
          % (options["group"], topic, partition, options["set"]), file=out)
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
        if options["set"] is not None:
            return await setOffset(reactor, options, view, storage, out, err)
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

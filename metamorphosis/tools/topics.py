"""
C{metaq topics}: the topics of a cluster and where their partitions are.

    metaq -z zk:2181 topics [list]
    metaq -z zk:2181 topics describe TOPIC
    metaq -b 127.0.0.1:8123 topics [list|describe TOPIC]

With ZooKeeper, the topics are those brokers announce (C{brokers/topics-pub}
and C{topics-sub}: C{<brokerId>-m} for masters, C{<brokerId>-s<n>} for
slaves) and each master broker is asked for its C{stats topics} (messages,
bytes) and C{stats offsets} (each partition's first and end offset).  With
C{--broker}, only that broker is asked.
"""

import json
import sys
from dataclasses import dataclass, field

from twisted.internet import threads
from twisted.python import usage

from metamorphosis.client.errors import MetaClientError
from metamorphosis.protocol.status import OK
from metamorphosis.tools.cli import (
    ToolError,
    Verbosity,
    checkBrokerSource,
    inheritShared,
    openBroker,
    openZooKeeper,
    table,
)
from metamorphosis.zk import childrenOf, disconnect, normalizeRoot, textOf


class ListOptions(usage.Options):
    synopsis = ""


class DescribeOptions(usage.Options):
    synopsis = "TOPIC"

    def parseArgs(self, topic):
        self["topic"] = topic


class Options(Verbosity, usage.Options):
    synopsis = "(--zookeeper HOST:PORT | --broker HOST:PORT) [list | describe TOPIC]"
    longdesc = __doc__.split("\n\n")[2].replace("\n", " ")
    optParameters = [
        ["zookeeper", "z", None, "ZooKeeper host:port[,host:port...]"],
        ["zk-root", None, "/meta", "MetaQ's root znode"],
        ["broker", "b", None, "without ZooKeeper: ask this one broker"],
        ["timeout", "t", 10.0, "seconds to wait for ZooKeeper and each broker", float],
    ]
    subCommands = [
        ["list", None, ListOptions, "every topic: partitions, brokers, messages, bytes"],
        ["describe", None, DescribeOptions, "one topic's partitions: broker, offsets, size"],
    ]
    defaultSubCommand = "list"

    def postOptions(self):
        inheritShared(self)
        checkBrokerSource(self)
        self["zk-root"] = normalizeRoot(self["zk-root"])


@dataclass
class Cluster:
    """
    The brokers and topics ZooKeeper shows.

    @ivar masters: broker id -> master URL.
    @ivar slaves: broker id -> list of slave URLs.
    @ivar topics: topic -> {broker name (C{3-m}, C{3-s0}) -> number of partitions}.
    """

    masters: dict = field(default_factory=dict)
    slaves: dict = field(default_factory=dict)
    topics: dict = field(default_factory=dict)


def readCluster(client, root):
    """
    Read a L{Cluster} (blocking: call it in a thread).
    """
    cluster = Cluster()
    for brokerId in childrenOf(client, root + "/brokers/ids"):
        if not brokerId.isdigit():
            continue
        for node in childrenOf(client, "%s/brokers/ids/%s" % (root, brokerId)):
            url = textOf(client, "%s/brokers/ids/%s/%s" % (root, brokerId, node))
            if node == "master" and url:
                cluster.masters[int(brokerId)] = url
            elif node.startswith("slave") and url:
                cluster.slaves.setdefault(int(brokerId), []).append(url)
    for kind in ("topics-pub", "topics-sub"):
        base = "%s/brokers/%s" % (root, kind)
        for topic in childrenOf(client, base):
            for name in childrenOf(client, "%s/%s" % (base, topic)):
                try:
                    parts = int(json.loads(textOf(client, "%s/%s/%s" % (base, topic, name)) or "")["numParts"])
                except (ValueError, KeyError, TypeError):
                    continue
                cluster.topics.setdefault(topic, {})[name] = parts
    return cluster


def parseTopicsReply(body):
    """
    C{stats topics} lines: topic -> C{(messages, bytes)} (empty topics
    have zeros).
    """
    found = {}
    for line in body.splitlines():
        words = line.split()
        if len(words) >= 2 and words[1] == "*Empty*":
            found[words[0]] = (0, 0)
        elif len(words) >= 7 and words[1] == "partitions":
            fields = dict(zip(words[1::2], words[2::2]))
            found[words[0]] = (int(fields["message_count"]), int(fields["message_bytes"]))
    return found


def parseOffsetsReply(body):
    """
    C{stats offsets} lines: C{(topic, partition number)} -> C{(min, max)}.
    """
    found = {}
    for line in body.splitlines():
        words = line.split()
        if len(words) == 7 and words[1] == "part":
            found[words[0], int(words[2])] = (int(words[4]), int(words[6]))
    return found


async def brokerStats(reactor, url, timeout, err):
    """
    C{(topics, offsets)} of the broker at C{url} (see L{parseTopicsReply}
    and L{parseOffsetsReply}), or C{({}, {})} with a warning when it
    cannot be asked.
    """
    try:
        broker = await openBroker(reactor, url, timeout)
    except ToolError as e:
        print("warning: %s" % (e,), file=err)
        return {}, {}
    try:
        replies = []
        for item in ("topics", "offsets"):
            reply = await broker.stats(item, timeout=timeout)
            if reply.code != OK:
                raise MetaClientError("stats %s answered %d" % (item, reply.code))
            replies.append(reply.body.decode("utf-8", "replace"))
        return parseTopicsReply(replies[0]), parseOffsetsReply(replies[1])
    except MetaClientError as e:
        print("warning: %s: %s" % (url, e), file=err)
        return {}, {}
    finally:
        broker.transport.loseConnection()


def _cell(value):
    return "-" if value is None else str(value)


async def main(reactor, options, out=None, err=None):
    out, err = out or sys.stdout, err or sys.stderr
    if options["zookeeper"]:
        zookeeper = await openZooKeeper(reactor, options["zookeeper"], options["timeout"])
        try:
            cluster = await threads.deferToThread(readCluster, zookeeper, options["zk-root"])
        finally:
            await disconnect(zookeeper, reactor)
    else:
        cluster = None
    masters = cluster.masters if cluster is not None else {None: options["broker"]}
    stats = {}
    for brokerId, url in sorted(masters.items(), key=lambda item: str(item[0])):
        stats[brokerId] = await brokerStats(reactor, url, options["timeout"], err)
    if cluster is None:
        # One broker: its topics are what it reports.
        topicsReply, offsetsReply = stats[None]
        cluster = Cluster(masters=masters, topics={
            topic: {"-": len({p for (t, p) in offsetsReply if t == topic})}
            for topic in topicsReply})
    if options.subCommand == "describe":
        return describe(options.subOptions["topic"], cluster, stats, out)
    rows = []
    for topic, brokers in sorted(cluster.topics.items()):
        masterNames = [name for name in brokers if not name.partition("-")[2].startswith("s")]
        partitions = sum(brokers[name] for name in masterNames)
        messages = size = 0
        for name in masterNames:
            brokerId = int(name.split("-")[0]) if name != "-" else None
            messages += stats.get(brokerId, ({}, {}))[0].get(topic, (0, 0))[0]
            size += stats.get(brokerId, ({}, {}))[0].get(topic, (0, 0))[1]
        rows.append((topic, str(partitions), ",".join(sorted(brokers)), str(messages), str(size)))
    table(out, ("TOPIC", "PARTITIONS", "BROKERS", "MESSAGES", "BYTES"), rows)
    return 0


def describe(topic, cluster, stats, out):
    brokers = cluster.topics.get(topic)
    if not brokers:
        raise ToolError("unknown topic %r: no broker announces it" % (topic,))
    rows = []
    for name, parts in sorted(brokers.items()):
        brokerId, _, role = name.partition("-")
        if role.startswith("s"):
            continue
        key = int(brokerId) if brokerId.isdigit() else None
        offsets = stats.get(key, ({}, {}))[1]
        for number in range(parts):
            minimum, maximum = offsets.get((topic, number), (None, None))
            rows.append((
                "%s-%d" % (brokerId if key is not None else "0", number),
                cluster.masters.get(key, "-"),
                _cell(minimum), _cell(maximum),
                _cell(None if maximum is None else maximum - minimum),
            ))
    table(out, ("PARTITION", "MASTER", "MIN_OFFSET", "MAX_OFFSET", "BYTES"), rows)
    slaves = sorted(name for name in brokers if name.partition("-")[2].startswith("s"))
    if slaves:
        print("slaves: %s" % (", ".join(
            "%s (%s)" % (name, ", ".join(cluster.slaves.get(int(name.split("-")[0]), [])) or "-")
            for name in slaves),), file=out)
    return 0

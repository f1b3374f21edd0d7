"""
What the HTTP endpoint says about a broker: whether it is ready, its role,
and the JSON snapshot the dashboard page shows (identity, topics and
partitions, consumer groups from ZooKeeper, connections, replication,
transactions).

Everything but the consumer groups is read from the broker's objects on the
reactor thread.  The groups are read from ZooKeeper in a thread, at most
once every L{GROUPS_REFRESH} seconds whatever the number of viewers, and
served from that copy meanwhile.
"""

import os
import time

from twisted.internet import defer, threads
from twisted.logger import Logger

from metamorphosis import METAQ_VERSION
from metamorphosis.broker.address import brokerURL
from metamorphosis.client.offsets import parseZooKeeperOffset
from metamorphosis.client.partition import Partition
from metamorphosis.logfields import hostPort
from metamorphosis.zk import childrenOf, textOf

#: Seconds a reading of the consumer groups is served before the next one.
GROUPS_REFRESH = 5.0

#: At most this many groups are read (a cluster may hold thousands of
#: abandoned group znodes; the page and the metrics show the first ones).
MAX_GROUPS = 200


def readGroups(client, root, limit=MAX_GROUPS):
    """
    The consumer groups under C{root} (blocking: call it in a thread), with
    their live consumers, owners and committed offsets.

    @return: a list of dicts, by group name.
    """
    groups = []
    for group in childrenOf(client, root + "/consumers")[:limit]:
        base = "%s/consumers/%s" % (root, group)
        consumers = childrenOf(client, base + "/ids")
        rows = {}
        for topic in childrenOf(client, base + "/offsets"):
            for name in childrenOf(client, "%s/offsets/%s" % (base, topic)):
                rows[topic, name] = {"committed": textOf(client, "%s/offsets/%s/%s" % (base, topic, name))}
        for topic in childrenOf(client, base + "/owners"):
            for name in childrenOf(client, "%s/owners/%s" % (base, topic)):
                rows.setdefault((topic, name), {})["owner"] = textOf(
                    client, "%s/owners/%s/%s" % (base, topic, name))
        partitions = []
        for (topic, name), row in sorted(rows.items()):
            committed = None
            if row.get("committed"):
                try:
                    committed = parseZooKeeperOffset(row["committed"])[1]
                except ValueError:
                    committed = None
            partitions.append({"topic": topic, "partition": name, "owner": row.get("owner"),
                               "committed": committed})
        groups.append({"group": group, "consumers": consumers, "partitions": partitions})
    return groups


def withLag(groups, brokerId, maxOffsets):
    """
    C{groups} (as L{readGroups} gives them) with the end offset and the
    lag of each partition of broker C{brokerId}, whose end offsets
    C{maxOffsets} maps from C{(topic, partition number)} (L{None} for
    other partitions).
    """
    result = []
    for group in groups:
        partitions = []
        for row in group["partitions"]:
            maxOffset = lag = None
            try:
                partition = Partition.fromString(row["partition"])
            except ValueError:
                partition = None
            if partition is not None and partition.brokerId == brokerId:
                maxOffset = maxOffsets.get((row["topic"], partition.partition))
                if maxOffset is not None and row["committed"] is not None:
                    lag = max(0, maxOffset - row["committed"])
            partitions.append(dict(row, maxOffset=maxOffset, lag=lag))
        result.append(dict(group, partitions=partitions))
    return result


def offsetForTime(segments, maxOffset, seconds):
    """
    Where a consumer starts to read what was written at or after
    C{seconds} (since the epoch): the start of the first segment last
    modified at or after it (every message of the segments before it was
    written earlier), or C{maxOffset} when none was.  MetaQ records carry
    no time, so this is as precise as a segment (blocking: it stats the
    files).
    """
    for segment in segments:
        try:
            modified = os.stat(segment.path).st_mtime
        except FileNotFoundError:
            continue
        if modified >= seconds:
            return segment.start
    return maxOffset


class GroupsView:
    """
    The consumer groups of a broker's ZooKeeper, read in a thread and kept
    for L{GROUPS_REFRESH} seconds.
    """

    log = Logger()

    def __init__(self, broker, clock=time.monotonic):
        self.broker = broker
        self.clock = clock
        self._groups = None
        self._error = None
        self._readAt = None
        self._reading = None

    def cached(self):
        """
        The last reading (a list), or L{None} before the first one.
        """
        return self._groups

    async def current(self):
        """
        A reading at most L{GROUPS_REFRESH} seconds old.

        @return: C{(groups, error)}: the groups (L{None} when ZooKeeper is
            off or has never answered) and the reason of the last failed
            reading, if it failed.
        """
        registration = self.broker.zookeeper
        if registration is None:
            return None, "ZooKeeper is not enabled"
        if registration.client is None or not registration.client.connected:
            # kazoo would queue the reads until it connects.
            return self._groups, "not connected to ZooKeeper"
        fresh = self._readAt is not None and self.clock() - self._readAt < GROUPS_REFRESH
        if not fresh:
            if self._reading is None:
                self._reading = defer.ensureDeferred(self._read(registration))
            reading = self._reading
            await _shielded(reading)
        return self._groups, self._error

    async def _read(self, registration):
        try:
            self._groups = await threads.deferToThreadPool(
                self.broker.reactor, self.broker.reactor.getThreadPool(), readGroups,
                registration.client, registration.paths.root)
            self._error = None
        except Exception as e:
            self._error = "%s: %s" % (type(e).__name__, e)
            self.log.warn("Cannot read the consumer groups from ZooKeeper: {error}",
                          error=self._error)
        finally:
            self._readAt = self.clock()
            self._reading = None


def _shielded(d):
    """
    A Deferred firing when C{d} does, whose cancellation leaves C{d} alone
    (one reading serves several requests).
    """
    result = defer.Deferred()
    d.addBoth(lambda outcome: (result.called or result.callback(None), outcome)[1])
    return result


class BrokerStatus:
    """
    Readiness, role and the dashboard snapshot of one L{BrokerService}.
    """

    def __init__(self, broker):
        self.broker = broker
        self.groups = GroupsView(broker)

    def role(self):
        """
        C{master}, C{slave}, or C{promoted} (a slave that took over).
        """
        replication = self.broker.replication
        if replication is None or not replication.slave:
            return "master"
        promoted = dict(replication.statsItems()).get("promoted")
        return "promoted" if promoted else "slave"

    def url(self):
        port = self.broker.port
        if port is None:
            return None
        return brokerURL(self.broker.processor.hostName, port.getHost().port)

    def fenced(self):
        fence = self.broker.fence
        return bool(fence is not None and fence.fenced)

    def notReady(self):
        """
        Why the broker should not get traffic yet: a list of reasons, empty
        when it is ready (stores recovered, listening, registered in
        ZooKeeper if that is enabled, not fenced).
        """
        broker = self.broker
        reasons = []
        if not broker.storeManager.loaded:
            reasons.append("recovering the message stores")
        if broker.port is None:
            reasons.append("not listening yet")
        registration = broker.zookeeper
        if registration is not None and not registration.registered:
            reasons.append("not registered in ZooKeeper")
        if self.fenced():
            reasons.append("fenced: " + (broker.fence.refusal or "another broker is the master"))
        return reasons

    def lagged(self, groups):
        """
        The groups of a reading with the lag of this broker's partitions
        now.
        """
        if groups is None:
            return None
        maxOffsets = {(topic, partition): store.maxOffset
                      for topic, partition, store in self.broker.storeManager.stores()}
        return withLag(groups, self.broker.config.brokerId, maxOffsets)

    def xaStates(self):
        """
        Open XA transactions: state name -> count.
        """
        counts = {}
        for tx in self.broker.transactions.xaTransactions.values():
            counts[tx.state.name] = counts.get(tx.state.name, 0) + 1
        return counts

    def _connections(self):
        rows = []
        for proto in self.broker.factory.connections:
            rows.append({"peer": hostPort(proto.transport.getPeer())})
        return sorted(rows, key=lambda row: row["peer"])

    def _topics(self):
        brokerId = self.broker.config.brokerId
        topics = {}
        for topic, partition, store in self.broker.storeManager.stores():
            topics.setdefault(topic, []).append({
                "partition": "%d-%d" % (brokerId, partition),
                "messages": store.messageCount,
                "bytes": store.sizeInBytes,
                "minOffset": store.minOffset,
                "maxOffset": store.maxOffset,
                "segments": len(store.segments),
            })
        result = []
        for topic in sorted(set(topics) | {t for t in self.broker.config.topics if "*" not in t}):
            partitions = sorted(topics.get(topic, []), key=lambda p: p["partition"])
            config = self.broker.config.topicConfig(topic)
            result.append({
                "topic": topic,
                "partitions": partitions,
                "messages": sum(p["messages"] for p in partitions),
                "bytes": sum(p["bytes"] for p in partitions),
                "acceptPublish": config.acceptPublish,
                "acceptSubscribe": config.acceptSubscribe,
            })
        return result

    async def snapshot(self):
        """
        Everything the dashboard shows, as JSON-ready values.
        """
        broker = self.broker
        stats = broker.stats
        config = broker.config
        groups, groupsError = await self.groups.current()
        registration = broker.zookeeper
        replication = broker.replication
        transactions = broker.transactions
        return {
            "broker": {
                "id": config.brokerId,
                "url": self.url(),
                "version": METAQ_VERSION,
                "pid": os.getpid(),
                "uptime": int(broker.reactor.seconds() - stats.startTime),
                "role": self.role(),
                "slaveId": config.slaveId,
                "fenced": self.fenced(),
                "ready": not self.notReady(),
                "notReady": self.notReady(),
                "zookeeper": None if registration is None else {
                    "connect": config.zookeeper.zkConnect,
                    "root": registration.paths.root,
                    "registered": registration.registered,
                },
            },
            "counters": {
                "cmd_put": stats.cmdPut, "cmd_get": stats.cmdGet,
                "cmd_offset": stats.cmdOffset, "get_miss": stats.getMiss,
                "put_failed": stats.putFailed, "curr_connections": stats.connections,
            },
            "topics": self._topics(),
            "groups": self.lagged(groups),
            "groupsError": groupsError,
            "connections": self._connections(),
            "replication": None if replication is None else {
                "mode": type(replication).__name__,
                "items": {key: value for key, value in replication.statsItems()},
            },
            "transactions": {
                "begun": stats.txBegin, "xaBegun": stats.txXABegin,
                "committed": stats.txCommit, "rolledBack": stats.txRollback,
                "xa": sorted(({"key": tx.key, "state": tx.state.name}
                              for tx in transactions.xaTransactions.values()),
                             key=lambda row: row["key"]),
                "heuristic": sorted(transactions.heuristicTransactions),
            },
        }

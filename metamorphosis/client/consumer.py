"""
The message consumer (docs/client-consumer.md, Java's
C{SimpleMessageConsumer}).

A L{MessageConsumer} subscribes listeners to topics, joins its group in
ZooKeeper (L{GroupMembership}) or, in direct mode, reads one configured
partition of one broker, runs the fetch loops (L{FetchManager}), commits
offsets to its L{IOffsetStorage} (L{OffsetCommitter}) and hands messages
its listener keeps failing on to local recovery (L{RecoverManager}).
"""

import re
import warnings
from dataclasses import dataclass
from typing import ClassVar

from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import implementer

from metamorphosis.client.errors import MetaClientError
from metamorphosis.client.fetch import FetchManager, FetchRequest, processedIds
from metamorphosis.client.interfaces import IMessageListener
from metamorphosis.client.membership import GroupMembership, localHost
from metamorphosis.client.message import Message
from metamorphosis.client.offsets import LocalOffsetStorage, OffsetCommitter, PartitionOffset, ZooKeeperOffsetStorage
from metamorphosis.client.partition import Partition
from metamorphosis.client.recovery import RecoverManager
from metamorphosis.client.strategies import strategyNamed
from metamorphosis.protocol import records
from metamorphosis.protocol.commands import ValueCommand
from metamorphosis.protocol.status import FORBIDDEN, MOVED, NOT_FOUND, OK
from metamorphosis.protocol.topics import checkTopic

_ILLEGAL_GROUP = re.compile(r"[~!#$%^&*()+=`'\",;/?\[\]<>.:\s]")


def checkGroup(group):
    """
    Java's C{MetaMessageSessionFactory.checkConsumerConfig} rule.

    @raise ValueError: a blank group or one with a forbidden character.
    """
    if not group or not group.strip():
        raise ValueError("Blank group")
    if _ILLEGAL_GROUP.search(group):
        raise ValueError("Group name has invalid character: %r" % (group,))


@dataclass
class ConsumerConfig:
    """
    A consumer's settings, with Java's C{ConsumerConfig} names and
    defaults (docs/client-consumer.md); C{serverUrl}, C{zkSyncTimeMs}
    and C{recoverMessageIntervalInMills} come from Java's
    C{MetaClientConfig} and C{ZKConfig}, C{recoverPath} from its
    C{meta.recover.path} property (default C{~/.meta_recover}).
    """

    MAX_OFFSET: ClassVar[int] = 2 ** 63 - 1

    group: str
    consumerId: str | None = None
    fetchTimeoutInMills: int = 10000
    maxDelayFetchTimeInMills: int = 5000
    commitOffsetPeriodInMills: int = 5000
    maxFetchRetries: int = 5
    #: Fetches that may meet the same record failing its checksum before
    #: the consumer moves past it (docs/disk-faults.md); not in Java.
    maxInvalidMessageRetries: int = 3
    maxIncreaseFetchDataRetries: int = 5
    offset: int = 0
    alwaysConsumeFromMaxOffset: bool = False
    loadBalanceStrategyType: str = "DEFAULT"
    partition: str | None = None
    serverUrl: str | None = None
    zkSyncTimeMs: int = 5000
    recoverPath: str | None = None
    recoverMessageIntervalInMills: int = 300000

    def __post_init__(self):
        checkGroup(self.group)
        for name in ("fetchTimeoutInMills", "maxDelayFetchTimeInMills",
                     "commitOffsetPeriodInMills"):
            if getattr(self, name) <= 0:
                raise ValueError("%s must be positive" % (name,))
        strategyNamed(self.loadBalanceStrategyType)

    def setConsumeFromMaxOffset(self, always=False):
        """
        Start from the broker's newest message: the first time only (no
        stored offset yet), or (C{always}) at every start whatever offset
        was stored.  The first-time form is release 1.4.6.2's; Java's later
        source made it change nothing.
        """
        self.offset = self.MAX_OFFSET
        self.alwaysConsumeFromMaxOffset = always


@implementer(IMessageListener)
class _CallableListener:
    def __init__(self, function):
        self.receiveMessages = function


def asListener(listener):
    """
    An L{IMessageListener} from a listener (anything with a
    C{receiveMessages} method) or a plain callable.
    """
    if IMessageListener.providedBy(listener) or hasattr(listener, "receiveMessages"):
        return listener
    if callable(listener):
        return _CallableListener(listener)
    raise TypeError("%r is not a message listener" % (listener,))


class MessageConsumer:
    """
    Consumes topics as one member of a consumer group.

    @param connections: the session's shared connections
        (L{metamorphosis.client.connection.ConnectionPool}).
    @param zookeeper: a started C{KazooClient}, or L{None} for direct mode
        (C{config.serverUrl} and C{config.partition}).
    @param offsetStorage: an L{IOffsetStorage}; ZooKeeper by default, a
        L{LocalOffsetStorage} in direct mode.
    @param recoverManager: where messages the listener keeps failing on
        go: by default a L{RecoverManager} of this consumer under
        C{config.recoverPath}; a L{DropPolicy} drops them.
    """

    log = Logger()

    def __init__(self, config, connections, zookeeper=None, zkRoot="/meta",
                 offsetStorage=None, recoverManager=None, reactor=None,
                 idCache=processedIds, host=None):
        if reactor is None:
            from twisted.internet import reactor
        if zookeeper is None and not config.serverUrl:
            raise ValueError("A consumer needs ZooKeeper or a serverUrl")
        self.config = config
        self.connections = connections
        self.zookeeper = zookeeper
        self.reactor = reactor
        self.strategy = strategyNamed(config.loadBalanceStrategyType)
        if offsetStorage is None:
            offsetStorage = (ZooKeeperOffsetStorage(zookeeper, zkRoot) if zookeeper is not None
                             else LocalOffsetStorage())
        self.offsetStorage = offsetStorage
        if recoverManager is None:
            recoverManager = RecoverManager(
                config.recoverPath, config.recoverMessageIntervalInMills / 1000.0,
                reactor=reactor)
        self.recoverManager = recoverManager
        self._subscriptions = {}
        self.fetchManager = FetchManager(self, reactor, idCache)
        self.committer = OffsetCommitter(offsetStorage, self.group, self._offsets,
                                         config.commitOffsetPeriodInMills / 1000.0, reactor)
        self.membership = (GroupMembership(self, zookeeper, zkRoot, reactor, host)
                           if zookeeper is not None else None)
        if self.membership is not None:
            self.membership.tls = getattr(connections, "tls", None) is not None
        self._directOffsets = []
        self._brokers = set()
        self.started = False
        self.closed = False

    @property
    def group(self):
        return self.config.group

    # -- subscription -----------------------------------------------------

    def subscribe(self, topic, maxSize, listener, messageFilter=None):
        """
        Consume C{topic} with C{listener} (an L{IMessageListener} or a
        callable taking the message), fetching at most C{maxSize} bytes at
        a time, through an optional L{IConsumerMessageFilter}.

        @return: this consumer, for chaining.
        """
        if self.started:
            raise MetaClientError("Subscribe before completeSubscribe()")
        if topic in self._subscriptions:
            raise MetaClientError("Topic %s is already subscribed" % (topic,))
        if not topic or maxSize <= 0:
            raise ValueError("A subscription needs a topic and a positive maxSize")
        checkTopic(topic)
        self._subscriptions[topic] = (maxSize, asListener(listener), messageFilter)
        return self

    def topics(self):
        return list(self._subscriptions)

    def subscriptionOf(self, topic):
        _, listener, messageFilter = self._subscriptions[topic]
        return listener, messageFilter

    def completeSubscribe(self):
        """
        Join the group and start consuming.

        @return: a Deferred firing after the first rebalance.
        """
        return defer.ensureDeferred(self._completeSubscribe())

    async def _completeSubscribe(self):
        if self.started:
            raise MetaClientError("completeSubscribe() was already called")
        if not self._subscriptions:
            raise MetaClientError("Subscribe to a topic first")
        self.started = True
        for topic, (_, listener, _) in self._subscriptions.items():
            self.recoverManager.register(topic, self.group, listener)
        await self.recoverManager.start()
        self.committer.start()
        if self.membership is not None:
            await self.membership.register()
        else:
            await self._startDirect()

    def loadOffset(self, topic, partition):
        """
        Where to start consuming a partition just taken: its stored offset,
        else C{config.offset} (noted in the storage); the broker's end when
        C{alwaysConsumeFromMaxOffset}.

        @return: a Deferred firing with a L{PartitionOffset}.
        """
        return defer.ensureDeferred(self._loadOffset(topic, partition))

    async def _loadOffset(self, topic, partition):
        info = await self.offsetStorage.load(topic, self.group, partition)
        if info is None:
            await self.offsetStorage.initOffset(topic, self.group, partition, self.config.offset)
            info = PartitionOffset(topic, partition, self.config.offset)
        if self.config.alwaysConsumeFromMaxOffset:
            info.offset = self.config.MAX_OFFSET
        return info

    async def _startDirect(self):
        partition = Partition.fromString(self.config.partition or "0-0")
        requests = []
        for topic in self._subscriptions:
            info = await self.loadOffset(topic, partition)
            requests.append((self.config.serverUrl, info))
        self._directOffsets = [info for _, info in requests]
        self.startFetching(requests)

    def shutdown(self):
        """
        Stop consuming: stop fetching, commit the offsets, leave the group,
        close the offset storage and the connections.
        """
        return defer.ensureDeferred(self._shutdown())

    async def _shutdown(self):
        if self.closed:
            return
        self.closed = True
        if self.membership is not None and self.started:
            await self.membership.unregister()
        else:
            await self.stopFetching()
        await self.committer.stop()
        for topic in self._subscriptions:
            self.recoverManager.unregister(topic, self.group)
        await self.recoverManager.stop()
        await self.offsetStorage.close()
        for url in self._brokers:
            await self.connections.release(url, self)
        self._brokers = set()

    # -- what membership and the fetch loop call --------------------------

    def _offsets(self):
        if self.membership is not None:
            return self.membership.ownedOffsets()
        return self._directOffsets

    def ownedPartitions(self):
        """
        The (topic, L{Partition}) pairs this consumer fetches now.
        """
        return sorted((r.topic, r.partition) for r in self.fetchManager.requests)

    def commitOffsets(self):
        return self.committer.commit()

    def stopFetching(self):
        return self.fetchManager.stop()

    def startFetching(self, requests):
        """
        Fetch each C{(brokerUrl, PartitionOffset)}: take connections to the
        brokers needed, drop the others.
        """
        urls = {url for url, _ in requests}
        for url in urls - self._brokers:
            self.connections.acquire(url, self)
        for url in self._brokers - urls:
            self.connections.release(url, self)
        self._brokers = urls
        self.fetchManager.start(
            FetchRequest(url, info, self._subscriptions[info.topic][0]) for url, info in requests)

    async def fetch(self, request):
        """
        One C{get} for C{request}.

        @return: the bytes of a C{value} reply, or L{None} for "nothing"
            (no connection now, 404, 403, or a 301 that moved the offset).
        @raise MetaClientError: any other reply, a timeout, a lost
            connection.
        """
        connection = self.connections.acquire(request.brokerUrl, self)
        self._brokers.add(request.brokerUrl)
        if not connection.connected:
            connection.start()
            return None
        reply = await connection.request(
            "get", request.topic, self.group, request.partition.partition, request.offset,
            request.maxSize, timeout=self.config.fetchTimeoutInMills / 1000.0)
        if isinstance(reply, ValueCommand):
            if len(reply.data) < request.maxSize // 2:
                request.decreaseMaxSize()
            return reply.data
        if reply.code in (FORBIDDEN, NOT_FOUND):
            return None
        if reply.code == MOVED:
            request.retries = 0
            request.setOffset(int(reply.body), -1, True)
            return None
        raise MetaClientError("Status:%d,Error message:%s"
                              % (reply.code, reply.body.decode("utf-8", "replace")))

    async def offsetFor(self, request):
        """
        Ask the broker for a valid offset at or before the request's one.
        """
        connection = self.connections.acquire(request.brokerUrl, self)
        reply = await connection.request(
            "offset", request.topic, self.group, request.partition.partition, request.offset,
            timeout=self.config.fetchTimeoutInMills / 1000.0)
        if getattr(reply, "code", None) != OK:
            raise MetaClientError("Status:%s,Error message:%r"
                                  % (getattr(reply, "code", None), getattr(reply, "body", None)))
        return int(reply.body)

    def appendCouldNotProcess(self, message):
        """
        Hand a message the listener keeps failing on to local recovery.
        """
        return self.recoverManager.append(self.group, message)

    # -- one-shot reads ---------------------------------------------------

    async def get(self, topic, partition, offset, maxSize, brokerUrl, timeout=None):
        """
        Fetch once from C{offset} of C{partition} at C{brokerUrl},
        outside any group rebalancing.

        @return: a list of L{Message}s (complete records only).
        """
        messages, _ = await getOnce(
            self.connections.connection(brokerUrl), topic, self.group, partition, offset,
            maxSize, timeout or self.config.fetchTimeoutInMills / 1000.0)
        return messages


async def getOnce(connection, topic, group, partition, offset, maxSize, timeout):
    """
    One C{get} outside any fetch loop (Java's C{MessageConsumer.get}).

    @param connection: a L{metamorphosis.client.connection.BrokerConnection}.
    @return: C{(messages, consumed)}: the complete messages, and the bytes
        they take (the next offset is C{offset + consumed}); no messages
        for 403, 404 and 301.
    @raise MetaClientError: any other reply, a timeout, no connection.
    """
    reply = await connection.request("get", topic, group, partition.partition, offset, maxSize,
                                     timeout=timeout)
    if not isinstance(reply, ValueCommand):
        if reply.code in (FORBIDDEN, NOT_FOUND, MOVED):
            return [], 0
        raise MetaClientError("Status:%d,Error message:%s"
                              % (reply.code, reply.body.decode("utf-8", "replace")))
    decoded, consumed = records.decodeRecords(reply.data)
    return [Message(topic, r.data, r.attribute, r.id, partition) for r in decoded], consumed


def broadcastGroup(group, host=None):
    """
    The per-host group of a broadcast consumer: C{<group>-<ip>} with the
    address's C{.} and C{:} written C{-} (Java's
    C{MetaBroadcastMessageSessionFactory}).
    """
    return "%s-%s" % (group, re.sub(r"[.:]", "-", host or localHost()))


def createConsumer(factory, config, offsetStorage=None, recoverManager=None):
    """
    Deprecated: use C{factory.createConsumer(config)}.
    """
    warnings.warn("createConsumer(factory, config) is deprecated: use factory.createConsumer(config)",
                  DeprecationWarning, stacklevel=2)
    return factory.createConsumer(config, offsetStorage, recoverManager)


def createBroadcastConsumer(factory, config, offsetsPath=None, host=None, recoverManager=None):
    """
    Deprecated: use C{factory.createBroadcastConsumer(config)}.
    """
    warnings.warn("createBroadcastConsumer(factory, config) is deprecated: use "
                  "factory.createBroadcastConsumer(config)", DeprecationWarning, stacklevel=2)
    return factory.createBroadcastConsumer(config, offsetsPath, host, recoverManager)

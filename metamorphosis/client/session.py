"""
The session factory: what producers and consumers of one application share
(C{client/MetaMessageSessionFactory.java}, docs/client-producer.md).

It owns the ZooKeeper client (kazoo; every call made in a thread), the
broker discovery, the connection pool (one connection per broker) and the
local-recovery task, and creates producers.
"""

import os
from dataclasses import dataclass, field, replace

from kazoo.handlers.threading import KazooTimeoutError
from twisted.application import service
from twisted.internet import defer
from twisted.logger import Logger

from metamorphosis.client.browser import TopicBrowser
from metamorphosis.client.connection import ConnectionPool
from metamorphosis.client.consumer import MessageConsumer, broadcastGroup
from metamorphosis.client.discovery import StaticDiscovery, ZooKeeperDiscovery
from metamorphosis.client.errors import MetaClientError
from metamorphosis.client.localstore import LocalMessageStorage
from metamorphosis.client.offsets import LocalOffsetStorage
from metamorphosis.client.partition import parsePartitionsInfo
from metamorphosis.client.producer import (
    AsyncMessageProducer,
    LocalRecovery,
    OrderedMessageProducer,
)
from metamorphosis.client.selectors import OrderedPartitionSelector
from metamorphosis.client.transaction import TransactionalMessageProducer, XAMessageProducer
from metamorphosis.protocol.status import OK
from metamorphosis.zk import connect, disconnect, normalizeRoot


@dataclass
class MetaClientConfig:
    """
    Client settings (Java's C{MetaClientConfig} and C{ZKConfig}).

    @ivar zkConnect: ZooKeeper C{host:port[,host:port...]}; required unless
        C{serverUrl} is given.
    @ivar zkRoot: MetaQ's root znode.
    @ivar serverUrl: direct mode: C{meta://host:port} of the one broker,
        no ZooKeeper.
    @ivar partitions: direct mode: topic -> number of partitions on that
        broker; unlisted topics are sent with partition -1 (broker picks).
    @ivar partitionsInfo: the ordered producer's configured partitions:
        topic -> C{"<brokerId>:<count>;..."} (Java's C{topic.num.<topic>}).
    @ivar recoverMessageIntervalInMills: period of the re-sending of
        locally kept messages.
    @ivar localMessagePath: where the ordered producer keeps messages.
    @ivar asyncStoragePath: where the async producer keeps overflow.
    @ivar tls: a L{metamorphosis.tls.ClientTLS} to connect to brokers over
        TLS: to C{serverUrl} (which must then be a TLS listener), or to the
        TLS addresses brokers register in ZooKeeper (docs/security.md).
    """

    zkConnect: str | None = None
    zkRoot: str = "/meta"
    zkSessionTimeoutMs: int = 30000
    zkConnectionTimeoutMs: int = 30000
    zkEnable: bool = True
    serverUrl: str | None = None
    partitions: dict = field(default_factory=dict)
    partitionsInfo: dict = field(default_factory=dict)
    recoverMessageIntervalInMills: int = 300000
    heartbeatIntervalInMills: int = 10000
    reconnectIntervalInMills: int = 2000
    maxReconnectTimes: int = 350
    tls: object = None
    localMessagePath: str = field(
        default_factory=lambda: os.environ.get(
            "META_LOCALMESSAGE_PATH", os.path.expanduser("~/.meta_localmessage")
        )
    )
    asyncStoragePath: str = field(
        default_factory=lambda: os.environ.get(
            "META_ASYNC_STORAGE_PATH", os.path.expanduser("~/.meta_async_storage")
        )
    )

    def orderedPartitions(self):
        """
        @return: C{partitionsInfo} expanded: topic -> sorted partitions.
        """
        return {
            topic: parsePartitionsInfo(topic, value) for topic, value in self.partitionsInfo.items()
        }


class MetaMessageSessionFactory(service.Service):
    """
    Creates producers sharing one set of broker connections.

    Start it (L{start}, or as a child service) before creating producers;
    stop it (L{close}) to shut down producers, connections and ZooKeeper.

    @ivar zookeeper: the started C{KazooClient}, or L{None} in direct mode.
    @ivar zkRoot: the normalised MetaQ root.
    @ivar discovery: the L{IBrokerDiscovery}.
    @ivar connections: the L{ConnectionPool}.
    """

    log = Logger()

    def __init__(self, config, reactor=None):
        if reactor is None:
            from twisted.internet import reactor
        if not config.serverUrl and not config.zkConnect:
            raise MetaClientError("Either zkConnect or serverUrl must be set")
        self.config = config
        self.reactor = reactor
        self.zkRoot = normalizeRoot(config.zkRoot)
        self.zookeeper = None
        self.discovery = None
        self.connections = ConnectionPool(
            reactor,
            tls=config.tls,
            reconnectInterval=config.reconnectIntervalInMills / 1000.0,
            maxReconnectAttempts=config.maxReconnectTimes,
            heartbeatInterval=config.heartbeatIntervalInMills / 1000.0,
        )
        self.recovery = LocalRecovery(config.recoverMessageIntervalInMills / 1000.0, reactor)
        # A broker that comes back gets its kept messages at once.
        self.connections.addConnectedListener(lambda url: self.recovery.recoverAll())
        self._producers = []
        self._storages = {}
        self._publishers = {}
        self._topicUrls = {}
        self._started = None
        self._startFailure = None

    # -- lifetime ---------------------------------------------------------

    def start(self):
        """
        Connect to ZooKeeper (in a thread) or to the direct-mode broker.

        @return: a Deferred that fires with this factory when it can be used.
        """
        if self._started is None:
            self.running = True
            self._started = defer.ensureDeferred(self._start())
            self._started.addErrback(self._keepStartFailure)
        d = defer.Deferred()
        self._started.addBoth(lambda r: (d.callback(self._startFailure or r), r)[1])
        return d

    def _keepStartFailure(self, failure):
        # Every start() caller gets the failure; the shared Deferred keeps
        # none, so that no unhandled error is left behind.
        self._startFailure = failure

    async def _start(self):
        config = self.config
        if config.serverUrl:
            self.discovery = StaticDiscovery(config.serverUrl, config.partitions)
            self.connections.acquire(config.serverUrl, self)
        else:
            try:
                self.zookeeper = await connect(config, reactor=self.reactor)
            except KazooTimeoutError:
                raise MetaClientError(
                    "Could not connect to ZooKeeper at %s within %g s (zkConnectionTimeoutMs); "
                    "is it running, and is zkConnect right?"
                    % (config.zkConnect, config.zkConnectionTimeoutMs / 1000.0))
            self.discovery = ZooKeeperDiscovery(self.zookeeper, self.zkRoot, self.reactor,
                                                tls=config.tls is not None)
        self.discovery.addListener(self._brokersChanged)
        return self

    def startService(self):
        service.Service.startService(self)
        self.start().addErrback(
            lambda f: self.log.failure("Starting the MetaQ session factory failed", f)
        )

    def stopService(self):
        service.Service.stopService(self)
        return self.close()

    def close(self):
        """
        Shut down every producer, close connections and ZooKeeper.

        @return: a Deferred.
        """
        return defer.ensureDeferred(self._close())

    async def _close(self):
        self.running = False
        if self._started is None:
            return
        try:
            await self._started
        except Exception:
            pass
        for producer in list(self._producers):
            await producer.shutdown()
        await self.recovery.stop()
        for storage in self._storages.values():
            await storage.close()
        if self.discovery is not None:
            await self.discovery.stop()
        await self.connections.close()
        if self.zookeeper is not None:
            zookeeper, self.zookeeper = self.zookeeper, None
            await disconnect(zookeeper, self.reactor)

    def _checkStarted(self):
        if self.discovery is None:
            raise MetaClientError("The session factory is not started (call start() first)")

    # -- topics and brokers ------------------------------------------------

    def publishTopic(self, topic, ref):
        """
        Follow C{topic}'s brokers on behalf of C{ref} (a producer) and keep
        connections to them.

        @return: a Deferred that fires once the brokers are known and the
            connections to them have been tried (for up to 10 s, as Java
            waits).
        """
        self._checkStarted()
        self._publishers.setdefault(topic, set()).add(ref)
        d = self.discovery.publish(topic)
        d.addCallback(lambda _: self._awaitConnections(topic))
        return d

    def unpublishTopic(self, topic, ref):
        """
        Drop C{ref}'s interest in C{topic}; the last one stops following it.
        """
        refs = self._publishers.get(topic)
        if refs is None:
            return
        refs.discard(ref)
        if not refs:
            del self._publishers[topic]
            for url in self._topicUrls.pop(topic, ()):
                self.connections.release(url, ("topic", topic))
            self.discovery.unpublish(topic)

    def _brokersChanged(self, topic):
        if topic not in self._publishers:
            return
        ref = ("topic", topic)
        wanted = self.discovery.brokerUrls(topic)
        held = self._topicUrls.setdefault(topic, set())
        for url in wanted - held:
            self.connections.acquire(url, ref)
        for url in held - wanted:
            self.connections.release(url, ref)
        self._topicUrls[topic] = set(wanted)
        self.recovery.recoverAll(topic)

    def _awaitConnections(self, topic, timeout=10.0):
        waits = []
        for url in self.discovery.brokerUrls(topic):
            connection = self.connections.get(url)
            if connection is not None:
                waits.append(connection.whenConnected(timeout))

        def logFailures(results):
            for ok, result in results:
                if not ok:
                    self.log.warn("Publishing {topic}: {error}", topic=topic, error=result.getErrorMessage())

        return defer.DeferredList(waits, consumeErrors=True).addCallback(logFailures)

    # -- producers --------------------------------------------------------

    def _register(self, producer):
        self._producers.append(producer)
        return producer

    def producerShutdown(self, producer):
        """
        Forget a producer that was shut down.
        """
        if producer in self._producers:
            self._producers.remove(producer)
        self.recovery.remove(producer)

    def createProducer(self, selector=None):
        """
        A L{MessageProducer} (with local transactions: a
        L{TransactionalMessageProducer}); round-robin partition selection by
        default.
        """
        self._checkStarted()
        return self._register(TransactionalMessageProducer(self, selector))

    def createXAProducer(self, selector=None, uniqueQualifier=None):
        """
        An L{XAMessageProducer}: its messages join XA transactions through
        its C{getXAResource()} (docs/transactions.md).
        """
        self._checkStarted()
        return self._register(XAMessageProducer(self, selector, uniqueQualifier))

    def createAsyncProducer(self, selector=None, slidingWindowSize=20000):
        """
        An L{AsyncMessageProducer} (fire-and-forget); messages that cannot go
        out are kept under C{config.asyncStoragePath} and re-sent every
        C{recoverMessageIntervalInMills}.
        """
        self._checkStarted()
        storage = self._storage(self.config.asyncStoragePath)
        producer = AsyncMessageProducer(self, selector, slidingWindowSize, storage)
        self.recovery.add(producer)
        return self._register(producer)

    def createOrderedProducer(self, selector=None, saveToLocalWhenFailed=False):
        """
        An L{OrderedMessageProducer}; the selector defaults to an
        L{OrderedPartitionSelector} over C{config.partitionsInfo} keyed by
        the message attribute.
        """
        self._checkStarted()
        if selector is None:
            selector = OrderedPartitionSelector(self.config.orderedPartitions())
        storage = self._storage(self.config.localMessagePath)
        producer = OrderedMessageProducer(self, selector, storage, saveToLocalWhenFailed)
        self.recovery.add(producer)
        return self._register(producer)

    # -- consumers ----------------------------------------------------------

    def createConsumer(self, config, offsetStorage=None, recoverManager=None):
        """
        A L{MessageConsumer} of the group C{config.group}, sharing this
        factory's broker connections and ZooKeeper session and shut down
        with it (Java's C{createConsumer(ConsumerConfig)}).  A factory in
        direct mode (C{serverUrl}) gives its URL to a config that has none.

        @param config: a L{metamorphosis.client.consumer.ConsumerConfig}.
        @param offsetStorage: where offsets are kept (an L{IOffsetStorage});
            ZooKeeper by default, a local file in direct mode.
        @param recoverManager: where messages the listener keeps failing on
            go (see L{MessageConsumer}).
        """
        self._checkStarted()
        if self.zookeeper is None and not config.serverUrl:
            config = replace(config, serverUrl=self.config.serverUrl)
        consumer = MessageConsumer(config, self.connections, self.zookeeper, self.zkRoot,
                                   offsetStorage, recoverManager, self.reactor)
        return self._register(consumer)

    def createBroadcastConsumer(self, config, offsetsPath=None, host=None, recoverManager=None):
        """
        A consumer that receives every message of its topics (Java's
        C{MetaBroadcastMessageSessionFactory}): its group is made per host
        (C{<group>-<ip>}) and its offsets stay on the host, in a local file
        at C{offsetsPath} (C{~/.meta_offsets}).
        """
        config = replace(config, group=broadcastGroup(config.group, host))
        return self.createConsumer(config, LocalOffsetStorage(offsetsPath), recoverManager)

    def createTopicBrowser(self, topic, maxSize=1024 * 1024, timeout=5.0):
        """
        A L{TopicBrowser} of C{topic}'s master partitions as this factory
        knows them now (ZooKeeper, or the direct-mode partition map): every
        message from offset 0, partition after partition, outside any
        group (Java's C{createTopicBrowser}).

        @return: a Deferred firing with the browser.
        """
        return defer.ensureDeferred(self._topicBrowser(topic, maxSize, timeout))

    async def _topicBrowser(self, topic, maxSize, timeout):
        self._checkStarted()
        ref = ("browser", topic)
        await self.publishTopic(topic, ref)
        try:
            partitions = [(p, self.discovery.brokerUrlFor(topic, p))
                          for p in self.discovery.partitionsFor(topic) or () if p.partition >= 0]
        finally:
            self.unpublishTopic(topic, ref)
        return TopicBrowser(self.connections, topic, [(p, url) for p, url in partitions if url],
                            maxSize, timeout)

    def _storage(self, path):
        storage = self._storages.get(path)
        if storage is None:
            storage = self._storages[path] = LocalMessageStorage(path, self.reactor)
        return storage

    # -- statistics --------------------------------------------------------

    def getStats(self, url, item=None, timeout=3.0):
        """
        Ask the broker at C{url} for the statistics C{item} (stats.md).

        @return: a Deferred firing with a dict of the reply's lines (each
            split on its first space), as Java's C{parseStatsValues}.
        """
        connection = self.connections.connection(url)

        def parse(reply):
            if getattr(reply, "code", None) != OK:
                raise MetaClientError("Status:%s,Error message:%r" % (getattr(reply, "code", None), reply))
            values = {}
            for line in reply.body.decode("utf-8", "replace").split("\r\n"):
                key, _, value = line.partition(" ")
                if key and key not in ("STATS", "END"):
                    values[key] = value
            return values

        return connection.request("stats", item, timeout=timeout).addCallback(parse)

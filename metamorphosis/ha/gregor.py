"""
The synchronous replication slave: MetaQ's C{gregor} plugin
(spec/ha.md section 3.1, protocol.md section 6.10).

The slave is a plain broker that also accepts C{sync}: a put that carries the
master's partition and message id.  It stores the record exactly as the
master did (same id, flag and body, so the same bytes) and answers with its
own offset.  Requests on one connection are appended in arrival order: the
store is called on the reactor thread in the order the commands were
decoded, which is the ordering the Java slave buys with its ordered thread
pool.  The slave does not register in ZooKeeper; the master finds it by
address.
"""

from dataclasses import replace

from kazoo.exceptions import NoNodeError
from twisted.application import service
from twisted.internet import defer
from twisted.internet.task import deferLater
from twisted.logger import Logger
from zope.interface import implementer

from metamorphosis import zk

from metamorphosis.broker.interfaces import ISyncProcessor
from metamorphosis.ha import failover
from metamorphosis.ha.config import SLAVE_STATUS_TOPIC, ReplicationConfigError
from metamorphosis.ha.interfaces import IReplication
from metamorphosis.ha.transactions import NoTransactions
from metamorphosis.protocol import records
from metamorphosis.protocol.commands import ResultCommand

OK, FORBIDDEN, INTERNAL_ERROR = 200, 403, 500

CHECKSUM_FAILURE = "Checksum failure,message may be corrupted when transfering on networking."


def _result(code, text, opaque):
    return ResultCommand(code, text.encode("utf-8"), opaque)


@implementer(ISyncProcessor)
class SyncProcessor:
    """
    Applies C{sync} commands to the local store
    (C{GregorCommandProcessor.processSyncCommand}).

    @param processor: the broker's L{metamorphosis.broker.server.BrokerProcessor},
        whose store manager, statistics and error texts the slave shares.
    """

    log = Logger()

    #: Set when this slave was promoted: it takes no more syncs from the
    #: master it replaced.
    promoted = False

    def __init__(self, processor):
        self.processor = processor

    def processSync(self, command, session):
        processor = self.processor
        topic, partition, opaque = command.topic, command.partition, command.opaque
        if self.promoted:
            return _result(
                INTERNAL_ERROR,
                processor.genErrorMessage(topic, partition) + "Detail:this slave was promoted to master",
                opaque,
            )
        partitionString = "%d-%d" % (processor.config.brokerId, partition)
        processor.stats.statsPut(topic, partitionString)
        processor.stats.statsMessageSize(topic, len(command.data))
        if processor.config.isClosedPartition(topic, partition):
            return _result(
                FORBIDDEN,
                processor.genErrorMessage(topic, partition) + "Detail:Partition[%s] has been closed" % (partitionString,),
                opaque,
            )
        try:
            store = processor.storeManager.getOrCreateStore(topic, partition)
            if command.checksum != -1 and command.checksum != records.checksum(command.data):
                raise ValueError(CHECKSUM_FAILURE)
            appended = store.append(command.msgId, command.flag, command.data)
        except Exception as e:
            self.log.warn("Sync to {topic}-{partition} failed: {error}", topic=topic, partition=partition, error=e)
            processor.stats.statsPutFailed(topic, partitionString)
            return _result(INTERNAL_ERROR, processor.genErrorMessage(topic, partition) + "Detail:%s" % (e,), opaque)

        def stored(offset):
            return _result(OK, "%d %d %d" % (command.msgId, partition, offset), opaque)

        def failed(failure):
            self.log.failure("Sync append to {topic}-{partition} failed", failure, topic=topic, partition=partition)
            processor.stats.statsPutFailed(topic, partitionString)
            return _result(INTERNAL_ERROR, processor.genErrorMessage(topic, partition), opaque)

        return appended.addCallbacks(stored, failed)


@implementer(IReplication)
class MasterWatch(service.Service):
    """
    A sync slave with C{autoPromote}: watches its master's registration and
    the failover record (L{metamorphosis.ha.failover.Candidate}) and, when
    it is to take over, stops taking syncs and registers as the master.
    """

    log = Logger()

    #: Seconds between two reads of the master's registration.
    interval = 0.5

    def __init__(self, broker, syncProcessor, config):
        self.broker = broker
        self.syncProcessor = syncProcessor
        registration = broker.zookeeper
        self.registration = registration
        self.candidate = failover.Candidate(
            failover.recordPath(registration.paths, broker.config.brokerId),
            True,
            config.promoteAfterMs / 1000.0,
            lambda: registration.brokerString,
            broker.reactor,
        )
        self.fence = None
        self._loop = None

    def startService(self):
        service.Service.startService(self)
        self._loop = defer.ensureDeferred(self._watch())
        self._loop.addErrback(lambda f: None if f.check(defer.CancelledError) else self.log.failure("Watching the master stopped", f))

    def stopService(self):
        service.Service.stopService(self)
        if self._loop is not None:
            self._loop.cancel()
        if self.fence is not None and self.fence.running:
            self.fence.stopService()

    async def _watch(self):
        masterPath = self.registration.paths.brokerIdsPathOf(self.broker.config.brokerId)
        while self.running:
            client = self.registration.client
            if client is not None and client.connected:
                try:
                    try:
                        data, _ = await zk.deferKazoo(client.get_async(masterPath), self.broker.reactor)
                        masterUrl = data.decode("utf-8") if data else None
                    except NoNodeError:
                        masterUrl = None
                    if await self.candidate.shouldPromote(client, masterUrl):
                        self._promote()
                        return
                except defer.CancelledError:
                    # stopService cancelled us: no further round, no timer left behind.
                    raise
                except Exception as e:
                    self.log.warn("Watching the master failed: {error}", error=e)
            await deferLater(self.broker.reactor, self.interval, lambda: None)

    def _promote(self):
        self.log.warn("Promoted: this sync slave becomes broker {brokerId}'s master", brokerId=self.broker.config.brokerId)
        self.syncProcessor.promoted = True
        self.fence = failover.installFence(self.broker)
        self.fence.startService()
        self.registration.registerEverything()


@implementer(IReplication)
class GregorReplication:
    """
    The sync slave mode: adds the master's probe topic, keeps the broker
    out of ZooKeeper and accepts C{sync}.  With C{autoPromote} (ours) it
    keeps a ZooKeeper session, unregistered, to watch its master.
    """

    name = "gregor"
    slave = True
    log = Logger()

    def __init__(self, config):
        self.config = config
        self.syncProcessor = None
        self.watch = None

    def configure(self, metaConfig):
        metaConfig.topics[SLAVE_STATUS_TOPIC] = replace(metaConfig.topicConfig(SLAVE_STATUS_TOPIC), numPartitions=1)
        if self.config.autoPromote:
            zkConfig = metaConfig.zookeeper
            if not (zkConfig.zkEnable and zkConfig.zkConnect):
                raise ReplicationConfigError("autoPromote needs ZooKeeper: zk.zkEnable and zk.zkConnect in server.ini")
            self.log.info("Replication: gregor (sync slave), promoted when its master is gone")
            return
        metaConfig.zookeeper.zkEnable = False
        self.log.info("Replication: gregor (sync slave); not registering in ZooKeeper")

    def install(self, factory):
        self.syncProcessor = factory.syncProcessor = SyncProcessor(factory.processor)
        factory.transactionProcessor = NoTransactions(factory.processor.processPut)

    def makeService(self, broker):
        if not self.config.autoPromote or broker.zookeeper is None:
            return None
        # Connected but not registered until promoted.
        broker.zookeeper.unregisterEverything()
        self.watch = MasterWatch(broker, self.syncProcessor, self.config)
        return self.watch

    def statsItems(self):
        if self.syncProcessor is not None and self.syncProcessor.promoted:
            return [("promoted", True)]
        return []


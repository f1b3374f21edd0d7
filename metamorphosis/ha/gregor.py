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

from twisted.logger import Logger
from zope.interface import implementer

from metamorphosis.broker.interfaces import ISyncProcessor
from metamorphosis.ha.config import SLAVE_STATUS_TOPIC
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

    def __init__(self, processor):
        self.processor = processor

    def processSync(self, command, session):
        processor = self.processor
        topic, partition, opaque = command.topic, command.partition, command.opaque
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
class GregorReplication:
    """
    The sync slave mode: adds the master's probe topic, keeps the broker
    out of ZooKeeper and accepts C{sync}.
    """

    name = "gregor"
    log = Logger()

    def __init__(self, config):
        self.config = config

    def configure(self, metaConfig):
        metaConfig.topics[SLAVE_STATUS_TOPIC] = replace(metaConfig.topicConfig(SLAVE_STATUS_TOPIC), numPartitions=1)
        metaConfig.zookeeper.zkEnable = False
        self.log.info("Replication: gregor (sync slave); not registering in ZooKeeper")

    def install(self, factory):
        factory.syncProcessor = SyncProcessor(factory.processor)
        factory.transactionProcessor = NoTransactions(factory.processor.processPut)

    def makeService(self, broker):
        return None

    def statsItems(self):
        return []


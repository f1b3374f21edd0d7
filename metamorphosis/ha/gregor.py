"""
The synchronous replication slave: MetaQ's C{gregor} plugin
(docs/ha.md, docs/protocol.md).

The slave is a plain broker that also accepts C{sync}: a put that carries the
master's partition and message id.  It stores the record exactly as the
master did (same id, flag and body, so the same bytes) and answers with its
own offset.  Requests on one connection are appended in arrival order: the
store is called on the reactor thread in the order the commands were
decoded, which is the ordering the Java slave buys with its ordered thread
pool.  The slave does not register in ZooKeeper; the master finds it by
address.

With C{autoPromote} (ours) the slave takes its master's place when the
master is gone (L{MasterWatch}).  It knows at once when its master's
connections drop (L{MasterLink}) and, through the master's beat in
ZooKeeper, whether the master is still alive; once it decides to take over
it refuses every further C{sync}, so the old master cannot acknowledge
another put: under sync replication that refusal is the fence for
acknowledged data.
"""

from dataclasses import replace

from kazoo.exceptions import NoNodeError
from twisted.application import service
from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import implementer

from metamorphosis import zk
from metamorphosis.broker.idlepoll import SYNC_REPLICATION_MICROS
from metamorphosis.broker.interfaces import ISyncProcessor
from metamorphosis.broker.server import (
    CHECKSUM_FAILURE,
    REPLY_LATER,
    Replies,
    appendRecords,
    replyOrDeferred,
    storeByPartition,
    storedReplies,
)
from metamorphosis.ha import failover
from metamorphosis.ha.config import SLAVE_STATUS_TOPIC, ReplicationConfigError
from metamorphosis.ha.interfaces import IReplication
from metamorphosis.ha.transactions import NoTransactions
from metamorphosis.logfields import errorText, hostPort
from metamorphosis.protocol import records
from metamorphosis.protocol.commands import ResultCommand, newResult
from metamorphosis.protocol.status import FORBIDDEN, INTERNAL_ERROR, OK


def _result(code, text, opaque):
    return ResultCommand(code, text.encode("utf-8"), opaque)


class MasterLink:
    """
    The connections this slave receives C{sync} on - its master's link -
    and the seal that refuses them for good once the slave takes over.

    A master whose host dies without closing its connections (power loss,
    a frozen kernel) leaves them open on this side until TCP gives up;
    while the master heartbeats its link, a connection on which nothing
    has been read for L{silence} seconds is closed (L{closeWhenSilent}),
    so that such a link goes down too.

    @ivar sealed: whether syncs are refused.
    @ivar onDown: called when the last of those connections is lost.
    @ivar silence: the limit of silence of the connections, or L{None}.
    """

    log = Logger()

    def __init__(self):
        self.sessions = set()
        self.sealed = False
        self.onDown = None
        self.silence = None

    @property
    def down(self):
        """
        Whether no connection that carried a C{sync} is open.
        """
        return not self.sessions

    def synced(self, session):
        if session not in self.sessions:
            self.sessions.add(session)
            self.log.info("Master link up from {peer}", peer=hostPort(getattr(session, "peer", None)))
            if self.silence is not None:
                session.closeWhenSilent(self.silence)

    def closeWhenSilent(self, seconds):
        """
        Close each connection of the link, and each one to come, once
        nothing has been read from it for C{seconds}; L{None}: only after
        the broker's idle timeout, as any connection.
        """
        if seconds == self.silence:
            return
        self.silence = seconds
        if seconds is None:
            self.log.info("The master does not say it heartbeats its link: its silence is not a sign of death")
        else:
            self.log.info("Master link: closed after {silence} s without a read (the master heartbeats it)",
                          silence=seconds)
        for session in self.sessions:
            session.closeWhenSilent(seconds)

    def closed(self, session):
        if session in self.sessions:
            self.sessions.discard(session)
            self.log.warn("Master link from {peer} lost", peer=hostPort(getattr(session, "peer", None)))
            if not self.sessions and self.onDown is not None:
                self.onDown()

    def seal(self, whenDown=False):
        """
        Refuse every C{sync} from now on; with C{whenDown}, only if the link
        is down at this moment (checked and sealed in one step, on the
        reactor thread, so no sync slips in between).

        @return: whether it is sealed.
        """
        if whenDown and not self.down:
            return False
        self.sealed = True
        return True

    def unseal(self):
        """
        Take syncs again: the claim this seal was for was lost.
        """
        self.sealed = False


@implementer(ISyncProcessor)
class SyncProcessor:
    """
    Applies C{sync} commands to the local store
    (C{GregorCommandProcessor.processSyncCommand}).

    @param processor: the broker's L{metamorphosis.broker.server.BrokerProcessor},
        whose store manager, statistics and error texts the slave shares.
    @ivar link: the L{MasterLink}; sealed when this slave takes over.
    """

    log = Logger()

    def __init__(self, processor):
        self.processor = processor
        self.link = MasterLink()

    def sessionClosed(self, session):
        self.link.closed(session)

    def processSync(self, command, session):
        """
        The reply to a C{sync}, or a Deferred of it (L{syncThen}).
        """
        return replyOrDeferred(self.syncThen, command, session)

    def syncThen(self, command, session, replied):
        """
        Handle a C{sync}: the reply of a refused one is returned; that of a
        sync given to the store is passed to C{replied} once the store has
        it on disk under this broker's flush policy (or failed it), and
        L{REPLY_LATER} is returned.  What the broker's connections use, as
        for a plain put (L{BrokerProcessor.putThen}), for a sync that came
        alone (L{syncBatchThen} takes those that came together): no
        Deferred and no callback chain per sync.
        """
        self.link.synced(session)
        if self.link.sealed:
            return self._sealed(command)
        topic, partition, opaque, msgId = command.topic, command.partition, command.opaque, command.msgId
        checked = _PartitionSyncs(self, topic, partition)
        checked.add(command)
        checked.count()
        if checked.refused:
            return checked.refused[0]
        processor = self.processor

        def stored(offset):
            replied(newResult(OK, b"%d %d %d" % (msgId, partition, offset), opaque))

        def failed(failure):
            self.log.failure("Sync append to {topic}-{partition} failed", failure, topic=topic, partition=partition)
            processor.stats.statsPutFailed(topic, checked.partitionString)
            replied(_result(INTERNAL_ERROR, processor.genErrorMessage(topic, partition), opaque))

        checked.store.appendRecordsThen(b"".join(checked.records), 1, stored, failed)
        return REPLY_LATER

    def syncBatchThen(self, syncs, session, replied):
        """
        Handle the whole syncs of one read together (the broker's bulk
        path, L{BrokerFactory._syncBatchThen}): each is counted and checked
        as L{syncThen} does, with the same refusals, but what depends only
        on its partition (closed, accepted, its store) is found once per
        partition; those to one partition are stored as one append of
        their records (L{MessageStore.appendRecordsThen}: one store entry
        and one callback however many), and the replies to all of them,
        refusals included, go to C{replied} in one L{Replies} once every
        partition has stored (or failed) its part.  A refusal waits for
        the others' fsync: the master matches replies by opaque, and one
        write of replies is what this path is for.
        """
        self.link.synced(session)
        if self.link.sealed:
            return Replies(b"".join([self._sealed(sync).encode() for sync in syncs]))
        return storeByPartition(
            syncs, lambda topic, partition: _PartitionSyncs(self, topic, partition), replied)

    def _sealed(self, command):
        """
        The refusal of a sync by a slave that took its master's place.
        """
        return _result(
            INTERNAL_ERROR,
            self.processor.genErrorMessage(command.topic, command.partition)
            + "Detail:this slave was promoted to master",
            command.opaque,
        )


class _PartitionSyncs:
    """
    The syncs of one read to one partition (L{SyncProcessor.syncBatchThen}),
    or a sync alone (L{SyncProcessor.syncThen}): their records, stored as
    one append, what their replies need, and the refusals of those that are
    not stored.  The partition is looked at once, however many syncs.

    @ivar store: the partition's store, or L{None} when it refuses them all.
    @ivar error: why it has no store (it does not take the topic or the
        partition), or L{None}: closed, or it has one.
    @ivar sizes: the size of each sync's body, for the statistics.
    @ivar records: the header and body of each record to store, in order.
    @ivar replies: C{(msgId, opaque, record size)} of each, in order.
    @ivar refused: the refusals (L{ResultCommand}s).
    @ivar answer: the L{JoinedReplies} told of the outcome.
    """

    __slots__ = ("syncProcessor", "topic", "partition", "partitionString", "store", "error", "sizes",
                 "records", "replies", "refused", "answer")

    def __init__(self, syncProcessor, topic, partition):
        self.syncProcessor = syncProcessor
        processor = syncProcessor.processor
        self.topic = topic
        self.partition = partition
        self.partitionString = "%d-%d" % (processor.config.brokerId, partition)
        self.store = None
        self.error = None
        if not processor.config.isClosedPartition(topic, partition):
            try:
                self.store = processor.storeFor(topic, partition)
            except Exception as e:
                self.error = e
        self.sizes = []
        self.records = []
        self.replies = []
        self.refused = []
        self.answer = None

    def add(self, sync):
        """
        Take C{sync}: its record and reply for the append, or its refusal
        (the partition's, or its body fails its checksum).
        """
        data = sync.data
        self.sizes.append(len(data))
        if self.store is None:
            self._refuse(sync, self.error)
            return
        checksum = sync.checksum
        if checksum == -1:
            checksum = None
        elif checksum != records.checksum(data):
            self._refuse(sync, ValueError(CHECKSUM_FAILURE))
            return
        # Verified: the record keeps the checksum rather than computing it again.
        self.records.append(records.encodeHeader(sync.msgId, sync.flag, data, checksum))
        self.records.append(data)
        self.replies.append((sync.msgId, sync.opaque, records.HEADER_SIZE + len(data)))

    def _refuse(self, sync, error):
        """
        Refuse C{sync}: its partition is closed, or C{error} (its partition
        or topic is not taken, its body fails its checksum).
        """
        processor = self.syncProcessor.processor
        topic, partition = self.topic, self.partition
        if error is None:
            refusal = _result(
                FORBIDDEN,
                processor.genErrorMessage(topic, partition)
                + "Detail:Partition[%s] has been closed" % (self.partitionString,),
                sync.opaque,
            )
        else:
            self.syncProcessor.log.warn("Sync to {topic}-{partition} failed: {error}", topic=topic,
                                        partition=partition, error=errorText(error))
            processor.stats.statsPutFailed(topic, self.partitionString)
            refusal = _result(INTERNAL_ERROR, processor.genErrorMessage(topic, partition) + "Detail:%s" % (error,),
                              sync.opaque)
        self.refused.append(refusal)

    def encodedRefusals(self):
        return [refusal.encode() for refusal in self.refused]

    append = appendRecords

    def count(self):
        """
        Count every sync added as a put, refused ones included.
        """
        self.syncProcessor.processor.stats.statsPutMessages(self.topic, self.partitionString, self.sizes)

    def stored(self, offset):
        """
        The records are stored from C{offset} on, one after the other:
        each sync's reply is its master id, the partition and its own
        offset, as L{SyncProcessor.syncThen} answers it.
        """
        self.answer.add(storedReplies(self.replies, self.partition, offset))

    def failed(self, failure):
        """
        The append failed: each sync gets the reply a sync alone gets; the
        failure is logged once for them all.
        """
        syncProcessor = self.syncProcessor
        processor = syncProcessor.processor
        topic, partition = self.topic, self.partition
        syncProcessor.log.failure(
            "Sync append of {count} record(s) to {topic}-{partition} failed", failure,
            count=len(self.replies), topic=topic, partition=partition)
        error = processor.genErrorMessage(topic, partition)
        encoded = []
        for msgId, opaque, size in self.replies:
            processor.stats.statsPutFailed(topic, self.partitionString)
            encoded.append(_result(INTERNAL_ERROR, error, opaque).encode())
        self.answer.add(b"".join(encoded))


class MasterWatch(service.Service):
    """
    A sync slave with C{autoPromote}: watches its master's registration, its
    beat and the failover record (L{metamorphosis.ha.failover.Candidate})
    and, when it is to take over, refuses the master's syncs and registers
    as the master in the old master's place.

    While the master says in its state node that it heartbeats its link
    (every C{link_heartbeat_ms}), the link's connections are closed after
    C{masterSilenceMs} without a read, or three heartbeats if that is
    longer (L{MasterLink.closeWhenSilent}): a master whose host died
    without closing them is then seen as its link going down.  Without
    that word (a Java master, or one with C{linkHeartbeatMs=0}) an idle
    link is left alone: such a master may send nothing for as long as no
    put comes, and a master cut off from ZooKeeper only must keep its
    slave.

    It looks every L{interval} seconds, every L{downInterval} while the link
    from the master is down, and at once when it goes down.  Its own state
    node (role, link) is kept up to date for the admin tool.
    """

    log = Logger()

    #: Seconds between two looks while the master's link is up.
    interval = 0.25

    #: Seconds between two looks while it is down.
    downInterval = 0.1

    def __init__(self, broker, syncProcessor, config):
        self.broker = broker
        self.syncProcessor = syncProcessor
        self.link = syncProcessor.link
        registration = broker.zookeeper
        self.registration = registration
        brokerId = broker.config.brokerId
        self.states = failover.statesPath(registration.paths, brokerId)
        self.candidate = failover.Candidate(
            failover.recordPath(registration.paths, brokerId),
            True,
            config.promoteAfterMs / 1000.0,
            lambda: registration.brokerString,
            broker.reactor,
            config.masterGraceMs / 1000.0,
            self.states,
        )
        self.silence = config.masterSilenceMs / 1000.0 if config.masterGraceMs else 0
        self.fence = None
        self._loop = None
        self._wakeup = None
        self._stateWritten = None

    def startService(self):
        service.Service.startService(self)
        self.link.onDown = self._wake
        self._loop = defer.ensureDeferred(self._watch())
        self._loop.addErrback(lambda f: None if f.check(defer.CancelledError) else self.log.failure("Watching the master stopped", f))

    def stopService(self):
        service.Service.stopService(self)
        self.link.onDown = None
        if self._loop is not None:
            self._loop.cancel()
        if self.fence is not None and self.fence.running:
            self.fence.stopService()

    def _wake(self):
        if self._wakeup is not None and not self._wakeup.called:
            self._wakeup.callback(None)

    async def _pause(self):
        self._wakeup = defer.Deferred()
        call = self.broker.reactor.callLater(
            self.downInterval if self.link.down else self.interval, self._wake
        )
        try:
            await self._wakeup
        finally:
            self._wakeup = None
            if call.active():
                call.cancel()

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
                    if await self.candidate.shouldPromote(client, masterUrl, self.link):
                        self._promote()
                        return
                    self.link.closeWhenSilent(self._silenceLimit())
                    await self._writeState(client)
                except defer.CancelledError:
                    # stopService cancelled us: no further round, no timer left behind.
                    raise
                except Exception as e:
                    self.log.warn("Watching the master failed: {error}", error=errorText(e))
            await self._pause()

    def _silenceLimit(self):
        """
        How long the link may stay silent, or L{None}: without a heartbeat
        announced by the master, or with C{masterSilenceMs} or fast
        failover off.
        """
        heartbeat = self.candidate.masterHeartbeat
        if not self.silence or heartbeat is None:
            return None
        return max(self.silence, 3 * heartbeat)

    async def _writeState(self, client):
        url = self.registration.brokerString
        state = {"role": "slave", "link": "disconnected" if self.link.down else "connected"}
        if url is None or state == self._stateWritten:
            return
        await failover.writeState(client, "%s/%s" % (self.states, failover.stateNodeName(url)), state, self.broker.reactor)
        self._stateWritten = state

    def _promote(self):
        self.log.warn("Promoted: this sync slave becomes broker {brokerId}'s master", brokerId=self.broker.config.brokerId)
        self.link.seal()
        self.fence = failover.installFence(self.broker)
        self.fence.startService()
        # The old master's nodes may outlive it by a session timeout: while
        # the record names this broker, it takes their place at once.
        self.registration.takeOver = self.fence.namesThisBroker
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
        if metaConfig.idlePollMicros is None:
            metaConfig.idlePollMicros = SYNC_REPLICATION_MICROS
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
        if self.watch is not None and self.watch.fence is not None:
            return [("promoted", True)]
        return []

    def stateItems(self):
        return self.statsItems()

    def partitionLags(self):
        # Synchronous: a put is answered once the slave has it.
        return []


"""
The synchronous replication master: MetaQ's C{samsa} plugin
(docs/ha.md).

Every put is forwarded to the gregor slave as a C{sync} carrying the
master's message id, and appended locally; the producer is answered only
when both sides have spoken (L{SyncPut}).  Ids are allocated, the C{sync} is
written and the local append is queued in one step on the reactor thread,
so the slave receives a partition's records in the master's append order.
A slave that fails C{slaveContinuousFailureThreshold} times in a row takes
the master out of ZooKeeper until a probe succeeds (L{SlaveHealth}); while
the slave is not connected at all, puts fail at once.

While no put comes, the link to the slave carries a C{version} request
every C{linkHeartbeatMs} (ours; gecko's heartbeat, which a Java slave
answers too), and the master says so in its failover state node: so a
slave with C{autoPromote} can take a link that stays silent for a dead or
frozen master even when its sockets stay open (docs/ha.md).
"""

from itertools import repeat

from twisted.application import service
from twisted.logger import Logger
from zope.interface import implementer

from metamorphosis.broker.idlepoll import SYNC_REPLICATION_MICROS
from metamorphosis.broker.server import (
    CHECKSUM_FAILURE,
    REPLY_LATER,
    replyOrDeferred,
    storeByPartition,
    storedReplies,
)
from metamorphosis.broker.store.errors import PartitionReadOnly
from metamorphosis.ha.config import SLAVE_STATUS_TOPIC
from metamorphosis.ha.failover import LINK_HEARTBEAT_KEY
from metamorphosis.ha.interfaces import IReplication
from metamorphosis.ha.link import PeerLink, RequestTimeout
from metamorphosis.ha.outcome import SlaveHealth, SyncPut
from metamorphosis.ha.transactions import NoTransactions
from metamorphosis.logfields import errorText
from metamorphosis.protocol import records
from metamorphosis.protocol.commands import ResultCommand, SyncCommand, encodeSyncs, syncHead
from metamorphosis.protocol.status import FORBIDDEN, INTERNAL_ERROR, OK
from metamorphosis.ratelog import RateLimitedLog

SLAVE_DISCONNECTED = "Slave is disconnected "


def _result(code, text, opaque):
    return ResultCommand(code, text.encode("utf-8"), opaque)


class SyncMasterProcessor:
    """
    The master's put handling (C{SamsaCommandProcessor.processPutCommand});
    everything else is the broker's own processor.

    @param processor: the broker's L{metamorphosis.broker.server.BrokerProcessor}.
    @param link: the L{PeerLink} to the slave.
    @param health: the L{SlaveHealth} told about each slave reply.
    @param brokerUrl: a callable giving this broker's C{meta://host:port}.
    """

    log = Logger()

    def __init__(self, processor, link, config, health, brokerUrl, clock=None):
        self.processor = processor
        # A slave that fails fails every sync, and a full disk every
        # append: one line per kind an interval, not one per put.
        self.errors = RateLimitedLog(self.log, clock=clock)
        self.link = link
        self.config = config
        self.health = health
        self.brokerUrl = brokerUrl
        self.slaveUrl = config.slaveUrl
        self.timeout = config.sendToSlaveTimeoutInMills / 1000.0

    def __getattr__(self, name):
        # get, offset, stats, version: the broker's own answers.
        return getattr(self.processor, name)

    def processPut(self, command, session):
        """
        The reply to a put, or a Deferred of it (L{putThen}).
        """
        return replyOrDeferred(self.putThen, command, session)

    def putThen(self, command, session, replied):
        """
        Handle a put as L{BrokerProcessor.putThen} does (what the broker's
        connections call): a refused put's reply is returned; that of a put
        sent to the slave and given to the store is passed to C{replied}
        once both have answered (L{SyncPut}), and L{REPLY_LATER} is
        returned.
        """
        processor = self.processor
        topic, opaque = command.topic, command.opaque
        partitionString = "%d-%d" % (processor.config.brokerId, command.partition)
        processor.stats.statsPutMessage(topic, partitionString, len(command.data))
        if processor.config.isClosedPartition(topic, command.partition):
            return _result(FORBIDDEN, "Partition[%s] has been closed" % (partitionString,), opaque)
        processor.registered(topic)
        if not self.link.connected:
            processor.stats.statsPutFailed(topic, partitionString)
            return _result(INTERNAL_ERROR, SLAVE_DISCONNECTED, opaque)
        try:
            partition = command.partition
            if partition == -1:
                partition = processor.storeManager.chooseRandomPartition(topic)
            store = processor.storeFor(topic, partition)
            if store.readOnly is not None:
                # Refused before its sync leaves: the slave must not store
                # what this broker cannot.
                raise PartitionReadOnly(topic, partition, store.readOnly)
            msgId = processor.idWorker.nextId()
            put = SyncPut(self, topic, partition, msgId, opaque, replied)
            data = command.data
            self.link.sendFrame(
                syncHead(topic, partition, len(data), command.flag, msgId, command.checksum),
                data,
                self.timeout,
                put.slaveReplied,
                put.slaveUnreachable,
            )
            checksum = command.checksum
            if checksum == -1:
                checksum = None
            elif checksum != records.checksum(data):
                raise ValueError(CHECKSUM_FAILURE)
        except Exception as e:
            # A put whose sync left is never appended: never answered twice.
            self.errors.warn("put-refused:" + type(e).__name__, "Put to {topic} failed: {error}", topic=topic,
                             error=errorText(e))
            processor.stats.statsPutFailed(topic, partitionString)
            return _result(INTERNAL_ERROR, str(e), opaque)
        store.appendThen(msgId, command.flag, data, checksum, put.masterStored, put.masterFailed)
        return REPLY_LATER

    def putBatchThen(self, puts, session, replied):
        """
        The whole plain puts of one read together (the broker's bulk path,
        L{metamorphosis.broker.server.BrokerProcessor.putBatchThen}; each
        to a partition of 0 or more, none in a transaction): each is
        checked, refused and answered as L{putThen} handles it alone, but
        the syncs of those to one partition leave for the slave in one
        write (L{PeerLink.sendFrames}) and their records are appended here
        as one append, and the replies to all of them go to C{replied} in
        one L{Replies} once both sides have answered every one
        (L{_ReplicatedPuts}).  A partition's syncs leave before its records
        are queued, in the same order, as L{putThen} keeps them.

        @return: L{REPLY_LATER}, or the L{Replies} when every put is
            refused.
        """
        ids = iter(self.processor.idWorker.nextIds(len(puts)))
        return storeByPartition(
            puts, lambda topic, partition: _ReplicatedPuts(self, topic, partition, ids), replied)

    def putFailed(self, put):
        """
        Count a put that is answered with an error (L{SyncPut}).
        """
        self.processor.stats.statsPutFailed(put.topic, "%d-%d" % (self.processor.config.brokerId, put.partition))

    def appendFailed(self, failure, put):
        """
        Log why the local append of C{put} failed (L{SyncPut}).
        """
        if failure.check(OSError):
            # The disk's state, not a bug.
            self.errors.error("append-failed", "Append to {topic}-{partition} failed: {error}",
                              topic=put.topic, partition=put.partition, error=failure.getErrorMessage())
            return
        self.log.failure("Append to {topic}-{partition} failed", failure, topic=put.topic, partition=put.partition)

    def slaveRefused(self, reply, put):
        """
        The slave answered C{put}'s C{sync} with an error.
        """
        self.errors.warn(
            "slave-refused",
            "Slave {slave} refused {topic}-{partition}: {code} {text}",
            slave=self.link.url,
            topic=put.topic,
            partition=put.partition,
            code=getattr(reply, "code", None),
            text=getattr(reply, "body", b"").decode("utf-8", "replace"),
        )
        self.health.failed()
        put.slaveFailed()

    def slaveUnreachable(self, failure, put):
        """
        C{put}'s C{sync} got no answer (timeout, lost or no connection).
        """
        if failure.check(RequestTimeout):
            # gecko turns a timeout into a 504 reply, which counts.
            self.health.failed()
        self.errors.warn(
            "slave-unreachable", "Sync to slave {slave} failed: {error}", slave=self.link.url,
            error=failure.getErrorMessage()
        )
        put.slaveFailed()


class _ReplicatedPuts:
    """
    The plain puts of one read to one partition on the sync master
    (L{SyncMasterProcessor.putBatchThen}): their syncs, sent together, their
    records, appended as one append, and the refusals of those that are
    neither.  Each put is answered as L{SyncPut} answers a put alone: its
    id, partition and offset once its sync and the append both succeeded,
    else the slave's or the master's error.

    The slave answers each sync by its opaque (C{opaques}, in the order of
    C{replies}); a failed request (a timeout, the link lost) does not
    say which it was, so the syncs not confirmed by a C{200} once all are
    answered are the failed ones.

    @ivar store: the partition's store, or L{None} when it refuses them all.
    @ivar refusal: the C{(code, text)} of that refusal, or L{None}.
    @ivar accepted: C{(msgId, flag, body, checksum)} of each put to
        replicate, in order (its checksum as the producer sent it, -1 for
        none).
    @ivar replies: C{(msgId, opaque, record size)} of each, in order.
    @ivar refused: the encoded refusals.
    @ivar answer: the L{metamorphosis.broker.server.JoinedReplies} told of
        the outcome.
    @ivar offset: where the append stored the records, once it did.
    @ivar appendFailed: whether the append failed.
    @ivar opaques: the opaques of the syncs sent, or L{None} when the link
        was down (each failed at once).
    @ivar confirmed: the opaques of the syncs the slave stored.
    @ivar answered: how many syncs the slave answered, or failed.
    """

    __slots__ = ("master", "topic", "partition", "partitionString", "store", "refusal", "ids", "sizes", "accepted",
                 "replies", "refused", "answer", "offset", "appendFailed", "opaques", "confirmed",
                 "answered")

    def __init__(self, master, topic, partition, ids):
        processor = master.processor
        self.master = master
        self.topic = topic
        self.partition = partition
        self.partitionString = "%d-%d" % (processor.config.brokerId, partition)
        self.ids = ids
        self.store = None
        self.refusal = None
        self.sizes = []
        self.accepted = []
        self.replies = []
        self.refused = []
        self.answer = None
        self.offset = None
        self.appendFailed = False
        self.opaques = None
        self.confirmed = []
        self.answered = 0
        if processor.config.isClosedPartition(topic, partition):
            self.refusal = (FORBIDDEN, "Partition[%s] has been closed" % (self.partitionString,))
        elif not master.link.connected:
            self.refusal = (INTERNAL_ERROR, SLAVE_DISCONNECTED)
        else:
            try:
                store = processor.storeFor(topic, partition)
                processor.registered(topic)
                if store.readOnly is not None:
                    # Refused before any sync leaves: the slave must not
                    # store what this broker cannot.
                    raise PartitionReadOnly(topic, partition, store.readOnly)
                self.store = store
            except Exception as e:
                processor.refusals.warn("put-refused:" + type(e).__name__,
                                        "Refused a put to {topic}-{partition}: {error}",
                                        topic=topic, partition=partition, error=errorText(e))
                self.refusal = (INTERNAL_ERROR, str(e))

    def add(self, put):
        """
        Take C{put}: its sync, record and reply, or its refusal (the
        partition's, or its body fails its checksum: then no sync leaves).
        """
        data = put.data
        self.sizes.append(len(data))
        refusal = self.refusal
        if refusal is None:
            checksum = put.checksum
            if checksum == -1:
                checksum = None
            elif checksum != records.checksum(data):
                refusal = (INTERNAL_ERROR, CHECKSUM_FAILURE)
        if refusal is not None:
            code, text = refusal
            if code != FORBIDDEN:
                self.master.processor.stats.statsPutFailed(self.topic, self.partitionString)
            self.refused.append(_result(code, text, put.opaque).encode())
            return
        msgId = next(self.ids)
        self.accepted.append((msgId, put.flag, data, put.checksum))
        self.replies.append((msgId, put.opaque, records.HEADER_SIZE + len(data)))

    def encodedRefusals(self):
        return self.refused

    def count(self):
        """
        Count every put added, refused ones included (as L{putThen} does).
        """
        self.master.processor.stats.statsPutMessages(self.topic, self.partitionString, self.sizes)

    def append(self):
        """
        Send the syncs, then make the records and queue them: the slave's
        read, write, fsync and reply are the longer leg, and it starts
        before this broker's part of it.
        """
        master = self.master
        accepted = self.accepted
        self.opaques = master.link.sendFrames(
            len(accepted), lambda opaques: encodeSyncs(self.topic, self.partition, accepted, opaques),
            master.timeout, self.slaveReplied, self.slaveUnreachable)
        encoded = []
        encodeHeader = records.encodeHeader
        for msgId, flag, data, checksum in accepted:
            # Verified (add): the record keeps it rather than computing it again.
            encoded.append(encodeHeader(msgId, flag, data, None if checksum == -1 else checksum))
            encoded.append(data)
        self.store.appendRecordsThen(b"".join(encoded), len(self.replies), self.stored, self.failed)

    def stored(self, offset):
        self.offset = offset
        self._completeIfDone()

    def failed(self, failure):
        self.master.appendFailed(failure, self)
        self.appendFailed = True
        self._completeIfDone()

    def slaveReplied(self, code, opaque, body):
        if code != OK:
            # Logs, counts, and calls slaveFailed.
            self.master.slaveRefused(ResultCommand(code, body, opaque), self)
            return
        self.master.health.succeeded()
        self.confirmed.append(opaque)
        self.answered += 1
        self._completeIfDone()

    def slaveUnreachable(self, failure):
        # Logs, counts, and calls slaveFailed.
        self.master.slaveUnreachable(failure, self)

    def slaveFailed(self):
        self.answered += 1
        self._completeIfDone()

    def _completeIfDone(self):
        """
        Answer the puts once the slave has answered every sync and the
        append is over.
        """
        if self.answered == len(self.replies) and (self.offset is not None or self.appendFailed):
            self._complete()

    def _complete(self):
        replies = self.replies
        if not self.appendFailed and len(self.confirmed) == len(replies):
            self.answer.add(storedReplies(replies, self.partition, self.offset))
            return
        master = self.master
        where = "[partition '%s-%d'] failed" % (self.topic, self.partition)
        if self.appendFailed:
            # Whatever the slave said, as SyncPut answers a put alone.
            text = "Put message to [master '%s'] %s" % (master.brokerUrl(), where)
        else:
            text = "Put message to [slave '%s'] %s" % (master.slaveUrl, where)
        text = text.encode("utf-8")
        confirmed = set(self.confirmed)
        # No opaques: the link was down, and every sync failed.
        syncOpaques = self.opaques if self.opaques is not None else repeat(None)
        offset = self.offset
        encoded = []
        for reply, syncOpaque in zip(replies, syncOpaques):
            msgId, opaque, size = reply
            if not self.appendFailed and syncOpaque in confirmed:
                encoded.append(storedReplies([reply], self.partition, offset))
            else:
                master.putFailed(self)
                encoded.append(ResultCommand(INTERNAL_ERROR, text, opaque).encode())
            if offset is not None:
                offset += size
        self.answer.add(b"".join(encoded))


class SyncMasterService(service.Service):
    """
    Owns the link to the slave for the broker's lifetime.
    """

    def __init__(self, link, health):
        self.link = link
        self.health = health

    def startService(self):
        service.Service.startService(self)
        self.link.start()

    def stopService(self):
        service.Service.stopService(self)
        self.health.stop()
        return self.link.stop()


def brokerUrl(processor):
    """
    The broker's C{meta://host:port} as its error replies name it.
    """
    return "meta://%s:%s" % (processor.hostName, processor.stats.port)


@implementer(IReplication)
class SamsaReplication:
    """
    The sync master mode.

    @param config: a L{metamorphosis.ha.config.SamsaMasterConfig}.
    @ivar registration: the broker's ZooKeeper registration, which a
        failing slave suspends (set by L{makeService}).
    """

    name = "samsa"
    slave = False
    log = Logger()

    def __init__(self, config, reactor=None):
        if reactor is None:
            from twisted.internet import reactor
        self.config = config
        self.reactor = reactor
        host, port = config.slaveAddress
        if config.linkHeartbeatMs:
            # A heartbeat is a request like a sync: it may take as long.
            heartbeat = {"heartbeatSeconds": config.linkHeartbeatMs / 1000.0,
                         "heartbeatTimeout": config.sendToSlaveTimeoutInMills / 1000.0}
        else:
            heartbeat = {}
        self.link = PeerLink(reactor, host, port, tls=config.tls, **heartbeat)
        self.link.onConnected = self._announce
        self.registration = None
        self.processor = None
        self.health = SlaveHealth(
            config.slaveContinuousFailureThreshold,
            config.checkSlaveIntervalInMills / 1000.0,
            self._probe,
            lambda: self.registration.unregisterEverything() if self.registration is not None else None,
            lambda: self.registration.registerEverything() if self.registration is not None else None,
            reactor,
        )

    def configure(self, metaConfig):
        self.log.info("Replication: samsa (sync master) replicating to {slave}", slave=self.config.slaveUrl)
        if metaConfig.idlePollMicros is None:
            metaConfig.idlePollMicros = SYNC_REPLICATION_MICROS
        if self.config.recoverOffset:
            self.log.warn(
                "recoverOffset=true: consumer offsets are not rewritten by this broker "
                "(see docs/ha.md); registering at once"
            )

    def install(self, factory):
        processor = factory.processor
        self.processor = SyncMasterProcessor(
            processor, self.link, self.config, self.health, lambda: brokerUrl(processor), self.reactor
        )
        factory.processor = self.processor
        factory.transactionProcessor = NoTransactions(self.processor.processPut)
        if factory.idlePoller is not None:
            # Every replicated put waits for the slave's reply to its sync:
            # once syncs are out, poll for it rather than sleep.
            self.link.onSent = factory.idlePoller.poke

    def _probe(self):
        """
        A C{sync} to the probe topic: a Deferred of the slave's reply code.
        """
        return self._probeReply().addCallback(lambda reply: getattr(reply, "code", None))

    def _probeReply(self):
        body = b"test"
        idWorker = self.processor.processor.idWorker
        return self.link.request(
            lambda opaque: SyncCommand(SLAVE_STATUS_TOPIC, 0, body, 0, idWorker.nextId(), opaque, records.checksum(body)),
            self.config.sendToSlaveTimeoutInMills / 1000.0,
        )

    def _announce(self):
        """
        Probe the slave on every new connection, so that it knows at once
        that this connection is its master's link (a slave with
        C{autoPromote} takes over only while that link is down), even
        while no put comes.
        """
        if self.processor is None:
            return
        self._probeReply().addCallbacks(
            self._announced,
            lambda f: self.log.info("Announcing this master to {slave} failed: {error}",
                                    slave=self.config.slaveUrl, error=f.getErrorMessage()),
        )

    def _announced(self, reply):
        """
        A refusal is worth a line: a slave that took this master's place
        (while it was frozen or cut off, docs/ha.md) refuses its syncs from
        then on, so no put is acknowledged here.
        """
        code = getattr(reply, "code", None)
        if code != 200:
            self.log.warn("The slave {slave} refused this master's syncs: {code} {text}", slave=self.config.slaveUrl,
                          code=code, text=getattr(reply, "body", b"").decode("utf-8", "replace"))

    def makeService(self, broker):
        self.registration = broker.zookeeper
        return SyncMasterService(self.link, self.health)

    def statsItems(self):
        return [
            ("slave_link", "connected" if self.link.connected else "disconnected"),
            ("slave_continuous_failures", self.health.consecutiveFailures),
        ]

    def stateItems(self):
        """
        The stats items, and the link heartbeat: what tells the slave that
        a link on which it reads nothing for several heartbeats is dead
        rather than idle (docs/ha.md, "Fast failover of a sync pair").
        """
        items = self.statsItems()
        if self.config.linkHeartbeatMs:
            items.append((LINK_HEARTBEAT_KEY, self.config.linkHeartbeatMs))
        return items

    def partitionLags(self):
        # The master: nothing to catch up with.
        return []

"""
Durability of transactions: the redo journal, the commit into the
partitions, checkpoints and crash recovery (docs/transactions.md, which also describes our journal format).

The commit protocol differs from Java's on purpose.  Java appends the
messages first and journals the commit afterwards, so a crash between the two
rolls back a transaction whose messages are already in the partitions.  We
journal a C{COMMIT} record first (forced when C{flushTxLogAtCommit} is 1)
holding, per partition, the partition's end offset before the append; then
append each partition's messages with one C{appendBatch}; then journal
C{DONE}.  Recovery completes a C{COMMIT} without C{DONE} by looking in each
partition, from the recorded offset on, for the transaction's message ids
and appending only the missing ones, so every committed message is stored
exactly once whatever the moment of the crash.

With the C{COMMIT} forced (C{flushTxLogAtCommit=1}) the journal holds the
messages durably, so the partitions need no fsync of their own before the
answer: one fsync per transaction instead of two in turn.  The messages are
appended without one (C{appendBatch(durable=False)}) and C{DONE} is
journaled only once a later fsync of every partition covers them (a group
commit round of other puts, the timed flush armed here, a checkpoint or the
close): until then the commit pins the journal as an unfinished one, so no
checkpoint deletes its records.
"""

import os
from functools import partial

from twisted.internet.defer import Deferred, fail, gatherResults, succeed
from twisted.internet.task import LoopingCall
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger

from metamorphosis.broker.store.bursts import batchedWrites
from metamorphosis.broker.transactions.journal import (
    DEFAULT_FILE_SIZE,
    Checkpoints,
    CommitRecord,
    DoneRecord,
    PrepareRecord,
    PutRecord,
    RedoLog,
    RollbackRecord,
)
from metamorphosis.broker.transactions.transaction import PendingMessage
from metamorphosis.protocol.records import batchSize, decodeRecords
from metamorphosis.ratelog import RateLimitedLog

_SCAN_CHUNK = 4 * 1024 * 1024


def _byPartition(messages):
    groups = {}
    for message in messages:
        groups.setdefault((message.topic, message.partition), []).append(message)
    return groups


def _batch(messages):
    return [(m.msgId, m.flag, m.data) for m in messages]


def presentIds(store, offset, wanted):
    """
    Which of the message ids C{wanted} the partition C{store} holds at or
    after C{offset}.  Blocking (reads the partition): run it in a thread.
    """
    found = set()
    offset = max(offset, store.minOffset)
    chunk = _SCAN_CHUNK
    while True:
        messages = store.slice(offset, chunk)
        if messages is None:
            return found
        records, consumed = decodeRecords(messages.read(), verify=False)
        if not consumed:
            if messages.length < chunk:
                return found
            chunk *= 2
            continue
        found.update(r.id for r in records if r.id in wanted)
        offset += consumed


class _Unfinished:
    """
    A journaled commit without its DONE record: recovery could not complete
    it, or its messages wait for an fsync of C{partitions} partitions.
    While it is unfinished, checkpoints keep its journal records.
    """

    def __init__(self, key, location, partitions=0):
        self.key = key
        self.location = location
        self.partitions = partitions


class JournalTransactionStore:
    """
    Journals the work of transactions and applies committed ones to the
    message stores of a L{MessageStoreManager}.

    @ivar flushPolicy: C{flushTxLogAtCommit}: 0 never forces the journal,
        1 forces it before prepare, commit and rollback are answered, 2
        forces it once a second.
    """

    log = Logger()

    def __init__(
        self, config, storeManager, reactor, threadPool, fileSize=DEFAULT_FILE_SIZE
    ):
        self.directory = os.path.join(config.transactionDataPath, "transactions")
        self.flushPolicy = config.flushTxLogAtCommit
        self.partitionFlushInterval = config.txFlushInterval / 1000.0
        self.checkpointInterval = config.checkpointInterval / 1000.0
        self._storeManager = storeManager
        self._reactor = reactor
        self._threadPool = threadPool
        # The commits one journal fsync acknowledges append their messages
        # to each partition with one write (and journal their DONE records
        # with one write).
        self._redo = RedoLog(self.directory, reactor, threadPool, fileSize,
                             firing=batchedWrites, preallocate=config.preallocateSize)
        self._checkpoints = Checkpoints(self.directory, config.maxCheckpoints)
        self._lastCheckpoint = None
        self._live = {}
        self._loops = []
        # The timed flushes of partitions holding committed messages that
        # no fsync covers yet, by store.
        self._flushCalls = {}
        # A failing disk fails every commit its fsync covered: one line per
        # interval.
        self._flushErrors = RateLimitedLog(self.log, clock=reactor)

    def _inThread(self, f, *args):
        return deferToThreadPool(self._reactor, self._threadPool, f, *args)

    async def open(self, adoptPrepared):
        """
        Replay the journal: finish the commits a crash interrupted, roll back
        every transaction that was neither prepared nor committed, and hand
        each prepared one to C{adoptPrepared(key, messages, location)}, which
        returns the transaction object that continues it.
        """
        os.makedirs(self.directory, exist_ok=True)
        if self._storeManager.fsync is not None:
            self._redo.useFsync(self._storeManager.fsync)
        self._lastCheckpoint = await self._inThread(self._checkpoints.latest)
        records = await self._inThread(self._redo.recover, self._lastCheckpoint)
        pending = {}
        for location, record in records:
            if isinstance(record, PutRecord):
                entry = pending.setdefault(
                    record.key,
                    {"location": location, "messages": [], "prepared": False, "commit": None},
                )
                entry["messages"].append(
                    PendingMessage(
                        record.msgId, record.topic, record.partition, record.flag, record.data
                    )
                )
            elif isinstance(record, PrepareRecord) and record.key in pending:
                pending[record.key]["prepared"] = True
            elif isinstance(record, CommitRecord) and record.key in pending:
                pending[record.key]["commit"] = record
            elif isinstance(record, (DoneRecord, RollbackRecord)):
                pending.pop(record.key, None)
        committed = rolledBack = 0
        for key, entry in pending.items():
            if entry["commit"] is not None:
                try:
                    await self._redoCommit(key, entry["messages"], entry["commit"])
                except Exception:
                    # E.g. its topic is no longer accepted: keep it in the
                    # journal (pinned by the checkpoints) for a later start.
                    self.log.failure(
                        "Cannot complete the commit of {key}; it stays journaled", key=key
                    )
                    unfinished = _Unfinished(key, entry["location"])
                    self._live[unfinished] = unfinished
                    continue
                committed += 1
            elif not entry["prepared"]:
                self._redo.append(RollbackRecord(key))
                rolledBack += 1
            else:
                tx = adoptPrepared(key, entry["messages"], entry["location"])
                tx.location = entry["location"]
                self._live[tx] = tx
        if records:
            await self._redo.sync()
        self.log.info(
            "Transaction journal recovered: {records} records, {committed} commits "
            "completed, {rolledBack} rolled back, {prepared} prepared",
            records=len(records),
            committed=committed,
            rolledBack=rolledBack,
            prepared=sum(not isinstance(tx, _Unfinished) for tx in self._live),
        )
        if self.flushPolicy == 2:
            self._startLoop(1.0, self._flushIfDirty)
        if self.checkpointInterval > 0:
            self._startLoop(self.checkpointInterval, self.checkpoint)

    def _startLoop(self, interval, f):
        loop = LoopingCall(f)
        loop.clock = self._reactor
        loop.start(interval, now=False).addErrback(
            lambda failure: self.log.failure("Transaction journal task failed", failure)
        )
        self._loops.append(loop)

    def _flushIfDirty(self):
        if self._redo.dirty:
            return self._redo.sync()

    async def _redoCommit(self, key, messages, commit):
        starts = {(topic, partition): offset for topic, partition, offset in commit.partitions}
        for (topic, partition), group in _byPartition(messages).items():
            store = self._storeManager.getOrCreateStore(topic, partition)
            present = await self._inThread(
                presentIds,
                store,
                starts.get((topic, partition), 0),
                {m.msgId for m in group},
            )
            missing = [m for m in group if m.msgId not in present]
            if missing:
                self.log.info(
                    "Completing commit of {key}: appending {n} messages to {topic}-{partition}",
                    key=key,
                    n=len(missing),
                    topic=topic,
                    partition=partition,
                )
                await store.appendBatch(_batch(missing))
                await store.flush()
        self._redo.append(DoneRecord(key))

    def addMessage(self, tx, message):
        """
        Journal a put of C{tx} (written at once, not forced).
        """
        location = self._redo.append(
            PutRecord(
                tx.key,
                message.msgId,
                message.topic,
                message.partition,
                message.flag,
                message.data,
            )
        )
        if tx not in self._live:
            tx.location = location
            self._live[tx] = tx

    async def _force(self):
        if self.flushPolicy == 1:
            await self._redo.sync()

    async def prepare(self, tx):
        self._redo.append(PrepareRecord(tx.key))
        await self._force()

    def commit(self, tx, wasPrepared):
        """
        Journal the commit, append the messages to their partitions (one
        batch per partition, in put order), journal that it is done.

        @return: a Deferred firing once the messages are appended, after
            the COMMIT record is forced when C{flushTxLogAtCommit} is 1;
            it fails with the error of the journal or of an append.  The
            steps follow each other by callbacks: awaiting the journal's
            sync and the append as Deferreds took a third of a
            one-message transaction's Deferred work.
        """
        try:
            if tx not in self._live:
                return succeed(None)
            groups = _byPartition(tx.messages)
            stores = [
                (self._storeManager.storeFor(topic, partition), group)
                for (topic, partition), group in groups.items()
            ]
            self._redo.append(
                CommitRecord(
                    tx.key,
                    wasPrepared,
                    tuple(
                        (topic, partition, store.maxOffset)
                        for (topic, partition), (store, _) in zip(groups, stores)
                    ),
                )
            )
        except Exception:
            return fail()
        done = Deferred()
        if self.flushPolicy == 1:
            self._redo.syncThen(partial(self._commitJournaled, tx, stores, done))
        else:
            self._commitJournaled(tx, stores, done, None)
        return done

    def _commitJournaled(self, tx, stores, done, error):
        """
        The COMMIT record of C{tx} is written (and forced, when the policy
        asks): append its messages, or fail C{done} with C{error}.
        """
        if error is not None:
            done.errback(error)
            return
        # A forced COMMIT holds the messages durably: they need no fsync of
        # their partitions before the answer.
        durable = self.flushPolicy != 1
        batches = [(store, _batch(group)) for store, group in stores]
        appended = partial(self._commitAppended, tx, batches, durable, done)
        if len(batches) == 1:
            # The usual case, without a DeferredList.
            [(store, batch)] = batches
            store.appendBatchThen(batch, durable, lambda offset: appended([offset]),
                                  done.errback)
        else:
            gatherResults(
                [store.appendBatch(batch, durable) for store, batch in batches],
                consumeErrors=True,
            ).addCallbacks(appended, lambda failure: done.errback(failure.value.subFailure))

    def _commitAppended(self, tx, batches, durable, done, offsets):
        """
        The messages of C{tx} are in their partitions: journal DONE now, or
        once an fsync of each partition covers them.
        """
        try:
            del self._live[tx]
            if durable:
                self._redo.appendDone(DoneRecord(tx.key))
            else:
                unfinished = _Unfinished(tx.key, tx.location, len(batches))
                self._live[unfinished] = unfinished
                for (store, batch), offset in zip(batches, offsets):
                    store.whenFlushedThen(offset + batchSize(batch),
                                          partial(self._partitionFlushed, unfinished),
                                          partial(self._partitionFlushFailed, unfinished))
                    if store.groupCommit:
                        # Otherwise the partition's own flush policy flushes it.
                        self._flushWithin(store)
        except Exception:
            done.errback()
            return
        done.callback(None)

    def _partitionFlushed(self, unfinished, ignored):
        unfinished.partitions -= 1
        if not unfinished.partitions and self._live.pop(unfinished, None) is not None:
            self._redo.appendDone(DoneRecord(unfinished.key))

    def _partitionFlushFailed(self, unfinished, failure):
        # No DONE then: the next start looks for the messages in the
        # partition and appends those it misses.
        self._flushErrors.error(
            "partition-fsync-failed",
            "The fsync of the messages of {key} failed ({error}); the commit stays "
            "journaled and is checked by the next start", key=unfinished.key,
            error=str(failure.value))

    def _flushWithin(self, store):
        """
        Flush C{store} within C{txFlushInterval}, unless a group commit
        round of its puts has by then: a partition written only by
        transactions has no round of its own.  One flush covers every
        commit made before it, so a short interval still spares most of
        their fsyncs.
        """
        if store not in self._flushCalls:
            self._flushCalls[store] = self._reactor.callLater(
                self.partitionFlushInterval, self._timedFlush, store)

    def _timedFlush(self, store):
        del self._flushCalls[store]
        # A failure is logged by the store, and by the commits it fails
        # (_partitionFlushFailed).
        store.flush().addErrback(lambda failure: None)

    async def rollback(self, tx):
        if self._live.pop(tx, None) is None:
            return
        self._redo.append(RollbackRecord(tx.key))
        await self._force()

    async def checkpoint(self):
        """
        Record the earliest journal location recovery still needs (the first
        record of the oldest unfinished transaction, else the journal's end)
        once the partitions hold everything before it, and delete the redo
        files before it.
        """
        locations = [tx.location for tx in self._live]
        location = min(locations) if locations else self._redo.position
        if self._lastCheckpoint is not None and location <= self._lastCheckpoint:
            return
        await gatherResults(
            [store.flush() for _, _, store in self._storeManager.stores()],
            consumeErrors=True,
        )
        await self._redo.sync()

        def write():
            self._checkpoints.write(location)
            self._redo.deleteBefore(location.number)

        await self._inThread(write)
        self._lastCheckpoint = location

    async def close(self):
        for loop in self._loops:
            if loop.running:
                loop.stop()
        self._loops = []
        for call in self._flushCalls.values():
            call.cancel()
        self._flushCalls = {}
        await self.checkpoint()
        await self._redo.stopSyncing()
        await self._redo.stopFilling()
        await self._inThread(self._redo.close)

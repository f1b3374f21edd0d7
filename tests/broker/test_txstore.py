"""
Tests for L{metamorphosis.broker.transactions.store}: journaled commits and
what recovery makes of a journal cut at every step of a commit.
"""

import errno
import os

from twisted.internet.defer import Deferred, ensureDeferred, maybeDeferred
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from metamorphosis.broker.config import MetaConfig
from metamorphosis.broker.store import MessageStoreManager
from metamorphosis.broker.store.bursts import batchedWrites
from metamorphosis.broker.transactions import journal
from metamorphosis.broker.transactions.journal import DoneRecord
from metamorphosis.broker.transactions.journal import decodeRecords as decodeJournal
from metamorphosis.broker.transactions.store import JournalTransactionStore
from metamorphosis.broker.transactions.transaction import (
    LocalTransaction,
    PendingMessage,
    State,
    XATransaction,
)
from metamorphosis.protocol.records import decodeRecords
from tests.broker.txsupport import (
    ImmediateReactor,
    ManualThreadPool,
    MemoryStoreManager,
    SyncThreadPool,
)


class BrokenManager:
    """
    A store manager whose partitions cannot be opened.
    """

    fsync = None

    def __init__(self, manager):
        self.manager = manager

    def getOrCreateStore(self, topic, partition):
        raise OSError("cannot open %s-%d" % (topic, partition))

    def getStore(self, topic, partition):
        return self.manager.getStore(topic, partition)

    def stores(self):
        return self.manager.stores()


class JournalTransactionStoreTestsMixin:
    """
    The tests, for a store manager given by C{newManager(previous)}.
    """

    def setUp(self):
        self.config = MetaConfig(
            dataPath=self.mktemp(),
            flushTxLogAtCommit=1,
            acceptAnyTopic=True,
            numPartitions=2,
            unflushThreshold=0,
        )
        self.clock = Clock()
        self.manager = None
        self.store, self.prepared = self.restart()
        self.nextId = 1000

    def restart(self):
        """
        A new transaction store (and store manager) on the same journal and
        partitions, as after a crash (the previous ones are simply dropped,
        never closed).
        """
        self.manager = self.newManager(self.manager)
        store = JournalTransactionStore(
            self.config, self.manager, ImmediateReactor(self.clock), SyncThreadPool()
        )
        prepared = []

        def adopt(key, messages, location):
            tx = XATransaction(key, store, lambda t: None, "q")
            tx.state = State.PREPARED
            tx.messages = list(messages)
            prepared.append(tx)
            return tx

        self.successResultOf(ensureDeferred(store.open(adopt)))
        return store, prepared

    def transaction(self, key="TX:s:1", cls=LocalTransaction, messages=(("t", 0),)):
        if cls is XATransaction:
            tx = XATransaction(key, self.store, lambda t: None, "q")
        else:
            tx = LocalTransaction(key, self.store, lambda t: None)
        for topic, partition in messages:
            self.nextId += 1
            tx.addMessage(
                PendingMessage(self.nextId, topic, partition, 0, b"m%d" % (self.nextId,))
            )
        return tx

    def ids(self, topic, partition):
        """
        The message ids a consumer of the partition sees, once the timed
        flush of the transactions committed so far has run.
        """
        self.clock.advance(self.config.txFlushInterval / 1000.0)
        store = self.manager.getStore(topic, partition)
        if store is None or store.maxOffset == 0:
            return []
        return [r.id for r in decodeRecords(store.slice(0, 1 << 20).read())[0]]

    def countAppends(self, topic, partition):
        store = self.manager.getOrCreateStore(topic, partition)
        calls = []
        original = store.appendBatch

        def appendBatch(batch, durable=True):
            calls.append(batch)
            return original(batch, durable)

        store.appendBatch = appendBatch
        return calls

    def test_commitAppendsInOrderPerPartition(self):
        """
        A commit appends each partition's messages in put order with one
        batch per partition, and a restart adds nothing.
        """
        tx = self.transaction(messages=[("t", 0), ("t", 1), ("t", 0), ("u", 0)])
        appends = self.countAppends("t", 0)
        self.successResultOf(ensureDeferred(tx.commit(True)))
        self.assertEqual(self.ids("t", 0), [1001, 1003])
        self.assertEqual(self.ids("t", 1), [1002])
        self.assertEqual(self.ids("u", 0), [1004])
        self.assertEqual(len(appends), 1)
        self.restart()
        self.assertEqual(self.ids("t", 0), [1001, 1003])

    def test_uncommittedInvisible(self):
        """
        Puts are journaled, not appended; a crash rolls them back.
        """
        self.transaction(messages=[("t", 0), ("t", 0)])
        self.assertEqual(self.ids("t", 0), [])
        self.restart()
        self.assertEqual(self.ids("t", 0), [])
        # The rollback was journaled: a third start still has nothing.
        _, prepared = self.restart()
        self.assertEqual((self.ids("t", 0), prepared), ([], []))

    def test_rollback(self):
        tx = self.transaction(messages=[("t", 0)])
        self.successResultOf(ensureDeferred(tx.rollback()))
        self.assertEqual(tx.state, State.FINISHED)
        self.restart()
        self.assertEqual(self.ids("t", 0), [])

    def crashDuringAppend(self, written):
        """
        Commit a transaction over two partitions whose appends never
        complete; C{written} says which partitions' data reached the file
        before the crash.
        """
        tx = self.transaction(messages=[("t", 0), ("t", 1), ("t", 0)])
        for partition in (0, 1):
            store = self.manager.getOrCreateStore("t", partition)
            store.appendBatch = self.frozenAppend(store, partition in written)
        ensureDeferred(tx.commit(True))
        for partition in (0, 1):
            del self.manager.getStore("t", partition).appendBatch

    def frozenAppend(self, store, writes):
        original = store.appendBatch

        def append(batch, durable=True):
            if writes:
                original(batch, durable)
            return Deferred()

        return append

    def test_crashBeforeAppend(self):
        """
        A commit journaled but not appended is appended by recovery.
        """
        self.crashDuringAppend(written=())
        self.assertEqual(self.ids("t", 0), [])
        self.restart()
        self.assertEqual(self.ids("t", 0), [1001, 1003])
        self.assertEqual(self.ids("t", 1), [1002])

    def test_crashAfterPartialAppend(self):
        """
        Recovery appends only to the partitions that miss the messages.
        """
        self.crashDuringAppend(written=(1,))
        self.restart()
        self.assertEqual(self.ids("t", 0), [1001, 1003])
        self.assertEqual(self.ids("t", 1), [1002])

    def test_crashAfterAppendBeforeDone(self):
        """
        A commit fully appended but not marked done is not appended twice.
        """
        self.crashDuringAppend(written=(0, 1))
        self.restart()
        self.restart()
        self.assertEqual(self.ids("t", 0), [1001, 1003])
        self.assertEqual(self.ids("t", 1), [1002])

    def test_failedDoneWriteStillCommits(self):
        """
        A DONE record the journal cannot write (a full disk) does not fail
        the commit it closes: the commit is journaled and applied; the next
        start finds its messages and appends nothing.
        """
        realWrite = journal.os.write

        def write(fd, data):
            if bytes(data[8:9]) == bytes([journal.DONE]):
                raise OSError(errno.ENOSPC, "No space left on device")
            return realWrite(fd, data)

        self.patch(journal.os, "write", write)
        tx = self.transaction(messages=[("t", 0), ("t", 0)])
        self.successResultOf(ensureDeferred(tx.commit(True)))
        self.assertEqual(self.ids("t", 0), [1001, 1002])
        self.patch(journal.os, "write", realWrite)
        self.restart()
        self.assertEqual(self.ids("t", 0), [1001, 1002])

    def test_uncompletableCommitKept(self):
        """
        A commit that recovery cannot complete (its partition refuses) is
        logged and kept in the journal, and completed by a later start.
        """
        self.crashDuringAppend(written=())
        refuse = self.newManager
        self.newManager = lambda previous: BrokenManager(refuse(previous))
        self.store, _ = self.restart()
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1)
        self.successResultOf(ensureDeferred(self.store.checkpoint()))
        self.newManager = refuse
        self.manager = self.manager.manager
        self.restart()
        self.assertEqual(self.ids("t", 0), [1001, 1003])
        self.assertEqual(self.ids("t", 1), [1002])

    def test_preparedSurvives(self):
        """
        A prepared XA transaction comes back prepared with its messages, and
        can be committed after the restart.
        """
        tx = self.transaction("XID:1:01:02:q", XATransaction, [("t", 0), ("t", 0)])
        self.assertEqual(self.successResultOf(ensureDeferred(tx.prepare())), 0)
        self.store, prepared = self.restart()
        self.assertEqual([p.key for p in prepared], ["XID:1:01:02:q"])
        self.assertEqual([m.msgId for m in prepared[0].messages], [1001, 1002])
        self.assertEqual(self.ids("t", 0), [])
        self.successResultOf(ensureDeferred(prepared[0].commit(False)))
        self.assertEqual(self.ids("t", 0), [1001, 1002])
        _, prepared = self.restart()
        self.assertEqual((prepared, self.ids("t", 0)), ([], [1001, 1002]))

    def test_unpreparedXARolledBack(self):
        self.transaction("XID:1:01:02:q", XATransaction, [("t", 0)])
        _, prepared = self.restart()
        self.assertEqual((prepared, self.ids("t", 0)), ([], []))

    def test_storeFailureRollsBack(self):
        """
        A failing append answers XA_RBOTHER and the transaction is rolled
        back, also after a restart.
        """
        tx = self.transaction(messages=[("t", 0)])
        store = self.manager.getOrCreateStore("t", 0)
        store.appendBatchThen = (
            lambda batch, durable, stored, failed: failed(Failure(OSError("disk full"))))
        failure = self.failureResultOf(ensureDeferred(tx.commit(True)))
        self.assertEqual(failure.value.code, 104)
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1)
        self.assertEqual(
            failure.value.reply(),
            "XAException:code=104,msg=STORE COMMIT FAILED: Transaction rolled back.",
        )
        del store.appendBatchThen
        self.restart()
        self.assertEqual(self.ids("t", 0), [])

    def test_checkpoint(self):
        """
        A checkpoint lets recovery skip finished transactions and delete
        old redo files, while a prepared transaction before it is kept.
        """
        self.store._redo.fileSize = 64
        prepared = self.transaction("XID:1:01:02:q", XATransaction, [("t", 0)])
        self.successResultOf(ensureDeferred(prepared.prepare()))
        for n in range(5):
            tx = self.transaction("TX:s:%d" % (n,), messages=[("t", 1)])
            self.successResultOf(ensureDeferred(tx.commit(True)))
        # The commits are finished (DONE) once their partitions are flushed.
        self.clock.advance(self.config.txFlushInterval / 1000.0)
        directory = self.store.directory
        before = sorted(f for f in os.listdir(directory) if f.startswith("redo."))
        self.successResultOf(ensureDeferred(self.store.checkpoint()))
        self.assertEqual(
            sorted(f for f in os.listdir(directory) if f.startswith("redo.")), before
        )
        self.successResultOf(ensureDeferred(prepared.commit(False)))
        # The commits are finished (DONE) once their partitions are flushed.
        self.clock.advance(self.config.txFlushInterval / 1000.0)
        self.successResultOf(ensureDeferred(self.store.checkpoint()))
        after = sorted(f for f in os.listdir(directory) if f.startswith("redo."))
        self.assertEqual(len(after), 1)
        self.assertIn("checkpoint.2", os.listdir(directory))
        _, recovered = self.restart()
        self.assertEqual(recovered, [])
        self.assertEqual(len(self.ids("t", 1)), 5)
        self.assertEqual(len(self.ids("t", 0)), 1)

    def test_periodicFlush(self):
        """
        With C{flushTxLogAtCommit=2} commits do not wait for a sync; a
        timer forces the journal once a second.
        """
        self.config.flushTxLogAtCommit = 2
        self.store, _ = self.restart()
        tx = self.transaction(messages=[("t", 0)])
        self.successResultOf(ensureDeferred(tx.commit(True)))
        self.assertTrue(self.store._redo.dirty)
        self.clock.advance(1)
        self.assertFalse(self.store._redo.dirty)


class MemoryStoreTests(JournalTransactionStoreTestsMixin, SynchronousTestCase):
    """
    On in-memory partitions that survive the "crash".
    """

    def newManager(self, previous):
        return previous or MemoryStoreManager()


class RealStoreTests(JournalTransactionStoreTestsMixin, SynchronousTestCase):
    """
    On the broker's partition files, reloaded by a new store manager after
    each "crash".
    """

    def newManager(self, previous):
        manager = MessageStoreManager(
            self.config, ImmediateReactor(self.clock), SyncThreadPool()
        )
        self.successResultOf(maybeDeferred(manager.startService))
        return manager

    def journaled(self, recordType):
        """
        The keys of the records of C{recordType} in the journal, in order.
        """
        keys = []
        for name in sorted(os.listdir(self.store.directory)):
            if name.startswith("redo."):
                with open(os.path.join(self.store.directory, name), "rb") as f:
                    records, _ = decodeJournal(f.read())
                keys += [r.key for _, r in records if isinstance(r, recordType)]
        return keys

    def test_commitAnsweredBeforePartitionFsync(self):
        """
        With the COMMIT forced, the commit is answered once its messages
        are written to the partition, before an fsync of the partition (and
        so before consumers see them); DONE is journaled once the timed
        flush covers them.
        """
        tx = self.transaction(messages=[("t", 0), ("t", 0)])
        self.successResultOf(ensureDeferred(tx.commit(True)))
        store = self.manager.getStore("t", 0)
        self.assertEqual((store.sizeInBytes, store.maxOffset), (50, 0))
        self.assertEqual(self.journaled(DoneRecord), [])
        self.clock.advance(self.config.txFlushInterval / 1000.0)
        self.assertEqual(store.maxOffset, 50)
        self.assertEqual(self.journaled(DoneRecord), ["TX:s:1"])

    def test_crashBeforePartitionFsync(self):
        """
        A crash after the commit was answered and before its partition was
        flushed: the next start finds every message once (the process
        died, the page cache kept the writes), or appends the ones the
        partition lost.
        """
        tx = self.transaction(messages=[("t", 0), ("t", 1), ("t", 0)])
        self.successResultOf(ensureDeferred(tx.commit(True)))
        self.restart()
        self.assertEqual(self.ids("t", 0), [1001, 1003])
        self.assertEqual(self.ids("t", 1), [1002])
        self.assertEqual(self.journaled(DoneRecord), ["TX:s:1"])
        self.restart()
        self.assertEqual(self.ids("t", 0), [1001, 1003])

    def test_checkpointKeepsUnflushedCommit(self):
        """
        A checkpoint never starts after a commit whose partitions were not
        flushed when it began, so the journal keeps its messages.
        """
        tx = self.transaction(messages=[("t", 0)])
        self.successResultOf(ensureDeferred(tx.commit(True)))
        self.successResultOf(ensureDeferred(self.store.checkpoint()))
        self.assertLessEqual(self.store._lastCheckpoint, tx.location)
        # The checkpoint's flush finished the commit: the next one moves on.
        self.assertEqual(self.journaled(DoneRecord), ["TX:s:1"])
        self.successResultOf(ensureDeferred(self.store.checkpoint()))
        self.assertGreater(self.store._lastCheckpoint, tx.location)

    def test_failedPartitionFsyncKeepsCommitJournaled(self):
        """
        When the fsync that should cover a commit's messages fails, no DONE
        is journaled and checkpoints keep the commit, which the next start
        checks in the partition.
        """
        tx = self.transaction(messages=[("t", 0)])
        self.successResultOf(ensureDeferred(tx.commit(True)))
        realFdatasync = os.fdatasync

        def fdatasync(fd):
            raise OSError(errno.EIO, "Input/output error")

        # The partition's sync of its records is an fdatasync.
        self.patch(os, "fdatasync", fdatasync)
        self.clock.advance(self.config.txFlushInterval / 1000.0)
        self.patch(os, "fdatasync", realFdatasync)
        self.assertEqual(self.journaled(DoneRecord), [])
        self.successResultOf(ensureDeferred(self.store.checkpoint()))
        self.assertLessEqual(self.store._lastCheckpoint, tx.location)
        self.restart()
        self.assertEqual(self.ids("t", 0), [1001])
        self.assertEqual(self.journaled(DoneRecord), ["TX:s:1"])

    def test_commitsOfOneFsyncAppendTogether(self):
        """
        The commits of one socket read share one journal fsync round, and
        the commits it acknowledges append their messages to a partition
        with one write, in the order they were committed; the flush of the
        partition that covers them journals their DONE records with one
        write.  (The journal forces its files with
        the store manager's fsync, which runs at once here.)
        """
        pool = ManualThreadPool()
        store = JournalTransactionStore(
            self.config, self.manager, ImmediateReactor(self.clock), pool)
        opened = ensureDeferred(store.open(lambda *args: None))
        while pool.pending:
            pool.runOne()
        self.successResultOf(opened)
        self.store = store
        transactions = [self.transaction("TX:s:%d" % (n,)) for n in range(1, 4)]
        self.manager.getOrCreateStore("t", 0)
        writes = []
        journalWrites = []
        watchJournal = []
        realPwrite = os.pwrite

        def isJournal(fd):
            return os.path.basename(os.readlink("/proc/self/fd/%d" % (fd,))).startswith("redo.")

        def pwrite(fd, data, position):
            if not any(data):
                pass  # the zeros written ahead of the records
            elif not isJournal(fd):
                writes.append(len(data))
            elif watchJournal:
                journalWrites.append(bytes(data))
            return realPwrite(fd, data, position)

        self.patch(os, "pwrite", pwrite)
        fsyncs = []
        realFdatasync = os.fdatasync

        def fdatasync(fd):
            if isJournal(fd):
                fsyncs.append(fd)
            realFdatasync(fd)

        with batchedWrites:
            commits = [ensureDeferred(tx.commit(True)) for tx in transactions]
            watchJournal.append(True)
            # A round's sync (ThreadFsync) syncs the data: fdatasync.
            self.patch(os, "fdatasync", fdatasync)
        # One journal fsync for the three commits.
        self.assertEqual(len(fsyncs), 1)
        for commit in commits:
            self.successResultOf(commit)
        self.assertEqual(len(writes), 1)
        self.assertEqual(self.ids("t", 0), [tx.messages[0].msgId for tx in transactions])
        self.assertEqual(
            [[record for _, record in decodeJournal(data)[0]] for data in journalWrites],
            [[DoneRecord(tx.key) for tx in transactions]])

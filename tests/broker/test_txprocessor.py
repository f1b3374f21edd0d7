"""
Tests for L{metamorphosis.broker.transactions.processor}: the replies of
every transaction command, what a consumer sees in every state, and what a
restart keeps.
"""

import errno
import os

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from metamorphosis.broker.config import MetaConfig, TopicConfig
from metamorphosis.broker.stats import StatsManager
from metamorphosis.broker.transactions.processor import TransactionalProcessor
from metamorphosis.protocol.commands import PutCommand, ResultCommand, TransactionCommand
from metamorphosis.protocol.ids import IdWorker
from tests.broker.txsupport import ImmediateReactor, MemoryStoreManager, SyncThreadPool

XID = "XID:1:72756e31:6231:metaq-ref-harness"
XID2 = "XID:1:72756e32:6231:metaq-ref-harness"
OTHER_QUALIFIER_XID = "XID:1:72756e33:6231:other"
LOCAL = "TX:127.0.0.1-1795705128537-1:1"
SESSION = "127.0.0.1-1795705128537-1"


class Session:
    def __init__(self):
        self.context = {}
        self.peer = None


class ProcessorTestCase(SynchronousTestCase):
    def setUp(self):
        self.config = MetaConfig(
            dataPath=self.mktemp(),
            maxTxTimeoutInSeconds=60,
            topics={"meta-test": TopicConfig("meta-test", numPartitions=2)},
        )
        self.manager = MemoryStoreManager()
        self.clock = Clock()
        self.session = Session()
        self.opaque = 0
        self.processor = self.start()

    def start(self):
        processor = TransactionalProcessor(
            self.config,
            self.manager,
            IdWorker(0),
            StatsManager(self.config, self.manager),
            reactor=ImmediateReactor(self.clock),
            threadPool=SyncThreadPool(),
            adminPath=None,
        )
        self.successResultOf(processor.startService())
        return processor

    def restart(self):
        """
        A new processor on the same journal and partitions, as after a
        crash of the broker (the old one is never stopped).
        """
        self.processor = self.start()
        self.session = Session()

    def reply(self, result):
        if result is None:
            return None
        if not isinstance(result, ResultCommand):
            result = self.successResultOf(result)
        return result

    def tx(self, kind, key=XID, timeout=0, qualifier="metaq-ref-harness", session=None):
        self.opaque += 1
        if key.startswith("TX:"):
            qualifier = None
        command = TransactionCommand(key, SESSION, kind, self.opaque, timeout, qualifier)
        reply = self.reply(
            self.processor.processTransaction(command, session or self.session)
        )
        if reply is not None:
            self.assertEqual(reply.opaque, self.opaque)
            return reply.code, reply.body.decode()
        return None

    def put(self, data, key=XID, partition=0, session=None):
        self.opaque += 1
        command = PutCommand("meta-test", partition, data, 0, self.opaque, -1, key)
        reply = self.reply(self.processor.processPut(command, session or self.session))
        return reply.code, reply.body.decode()

    def visible(self, partition=0):
        store = self.manager.getStore("meta-test", partition)
        return [] if store is None else [r.data for r in store.records()]



class ProcessorTests(ProcessorTestCase):
    def test_localCommit(self):
        """
        Scenario 09: BEGIN, two puts answered C{<id> 0 -1}, COMMIT_ONE_PHASE;
        the messages appear in order only at the commit.
        """
        self.assertEqual(self.tx("BEGIN", LOCAL, timeout=10), (200, ""))
        code, body = self.put(b"local-commit-1", LOCAL)
        self.assertEqual(code, 200)
        msgId, partition, offset = body.split(" ")
        self.assertEqual((partition, offset), ("0", "-1"))
        self.put(b"local-commit-2", LOCAL)
        self.assertEqual(self.visible(), [])
        self.assertEqual(self.tx("COMMIT_ONE_PHASE", LOCAL), (200, ""))
        self.assertEqual(self.visible(), [b"local-commit-1", b"local-commit-2"])
        self.assertEqual(
            self.manager.getStore("meta-test", 0).records()[0].id, int(msgId)
        )

    def test_localRollback(self):
        self.tx("BEGIN", LOCAL)
        self.put(b"a", LOCAL)
        self.assertEqual(self.tx("ROLLBACK", LOCAL), (200, ""))
        self.assertEqual(self.visible(), [])
        self.assertEqual(
            self.tx("COMMIT_ONE_PHASE", LOCAL),
            (500, "Local transaction '%s' has not been started." % (LOCAL,)),
        )

    def test_localBelongsToItsConnection(self):
        """
        Another connection cannot continue or commit a local transaction.
        """
        self.tx("BEGIN", LOCAL)
        other = Session()
        notStarted = "Local transaction '%s' has not been started." % (LOCAL,)
        self.assertEqual(self.put(b"a", LOCAL, session=other), (500, notStarted))
        self.assertEqual(self.tx("COMMIT_ONE_PHASE", LOCAL, session=other), (500, notStarted))

    def test_localPrepare(self):
        self.tx("BEGIN", LOCAL)
        self.assertEqual(
            self.tx("PREPARE", LOCAL),
            (500, "XAException:code=-3,msg=Prepare not implemented on Local Transactions."),
        )

    def test_closedConnectionRollsBackLocal(self):
        self.tx("BEGIN", LOCAL)
        self.put(b"a", LOCAL)
        self.processor.sessionClosed(self.session)
        self.assertEqual(self.processor.store._live, {})
        self.assertEqual(self.visible(), [])

    def test_xaTwoPhase(self):
        """
        Scenario 10: BEGIN, put, END (no reply), PREPARE answers C{0},
        COMMIT_TWO_PHASE from another connection.
        """
        self.assertEqual(self.tx("BEGIN"), (200, ""))
        self.put(b"xa-commit")
        self.assertIsNone(self.tx("END"))
        self.assertEqual(self.tx("PREPARE"), (200, "0"))
        self.assertEqual(self.visible(), [])
        self.assertEqual(self.tx("COMMIT_TWO_PHASE", session=Session()), (200, ""))
        self.assertEqual(self.visible(), [b"xa-commit"])

    def test_xaPrepareReadOnly(self):
        """
        PREPARE of an XA transaction without puts answers C{3} and ends it.
        """
        self.tx("BEGIN")
        self.assertEqual(self.tx("PREPARE"), (200, "3"))
        self.assertEqual(
            self.tx("COMMIT_TWO_PHASE"),
            (500, "XAException:code=-4,msg=XA transaction '%s' has not been started." % (XID,)),
        )

    def test_xaOnePhaseAndErrors(self):
        self.tx("BEGIN")
        self.put(b"one")
        self.assertEqual(
            self.tx("COMMIT_TWO_PHASE"),
            (
                500,
                "XAException:code=-6,msg=Cannot do 2 phase commit if the transaction "
                "has not been prepared.",
            ),
        )
        self.assertEqual(self.tx("COMMIT_ONE_PHASE"), (200, ""))
        self.assertEqual(self.visible(), [b"one"])
        self.tx("BEGIN", XID2)
        self.put(b"two", XID2)
        self.tx("PREPARE", XID2)
        self.assertEqual(
            self.tx("PREPARE", XID2),
            (500, "XAException:code=-6,msg=Cannot call prepare now."),
        )

    def test_xaRecover(self):
        """
        RECOVER lists the prepared transactions of the qualifier, CRLF
        separated, no trailing CRLF; without a qualifier all of them.
        """
        for key in (XID, XID2, OTHER_QUALIFIER_XID):
            qualifier = key.rsplit(":", 1)[1]
            self.tx("BEGIN", key, qualifier=qualifier)
            self.put(b"x", key)
            self.tx("PREPARE", key, qualifier=qualifier)
        self.assertEqual(self.tx("RECOVER", "null"), (200, XID + "\r\n" + XID2))
        self.assertEqual(
            self.tx("RECOVER", "null", qualifier=None),
            (200, "\r\n".join([XID, XID2, OTHER_QUALIFIER_XID])),
        )
        self.assertEqual(self.tx("RECOVER", "null", qualifier="nobody"), (200, ""))

    def test_unknownTransactions(self):
        """
        Unknown ids get the Java texts: bare for puts, XAException for XA
        commands.
        """
        self.assertEqual(
            self.put(b"x"), (500, "XA transaction '%s' has not been started." % (XID,))
        )
        self.assertEqual(
            self.tx("ROLLBACK"),
            (500, "XAException:code=-4,msg=XA transaction '%s' has not been started." % (XID,)),
        )
        self.assertEqual(
            self.tx("FORGET", LOCAL),
            (500, "XAException:code=-4,msg=%s is not a valid xid" % (LOCAL,)),
        )
        self.assertEqual(self.tx("FORGET"), (200, ""))

    def test_invalidPartition(self):
        self.tx("BEGIN")
        self.assertEqual(
            self.put(b"x", partition=-1),
            (500, "Invalid partition for transaction command:-1"),
        )

    def test_stats(self):
        """
        BEGINs, commits and rollbacks are counted on request, as Java does.
        """
        self.tx("BEGIN")
        self.tx("BEGIN", LOCAL)
        self.tx("COMMIT_ONE_PHASE", LOCAL)
        self.tx("ROLLBACK")
        self.tx("ROLLBACK")
        stats = self.processor.stats
        self.assertEqual(
            (stats.txBegin, stats.txXABegin, stats.txCommit, stats.txRollback), (2, 1, 1, 2)
        )

    def test_timeout(self):
        """
        A transaction begun with a timeout is rolled back when it expires,
        capped at C{maxTxTimeoutInSeconds}.
        """
        self.config.maxTxTimeoutInSeconds = 5
        self.tx("BEGIN", timeout=100)
        self.put(b"late")
        self.clock.advance(4.9)
        self.assertIn(XID, self.processor.xaTransactions)
        self.clock.advance(0.1)
        self.assertNotIn(XID, self.processor.xaTransactions)
        self.assertEqual(self.tx("COMMIT_ONE_PHASE")[0], 500)
        self.assertEqual(self.visible(), [])

    def test_preparedNeverTimesOut(self):
        self.tx("BEGIN", timeout=1)
        self.put(b"kept")
        self.tx("PREPARE")
        self.clock.advance(100)
        self.assertEqual(self.tx("COMMIT_TWO_PHASE"), (200, ""))
        self.assertEqual(self.visible(), [b"kept"])

    def test_restartInEveryState(self):
        """
        What a restart keeps, per state: START, IN_USE and rolled back
        transactions vanish, PREPARED ones come back prepared (RECOVER lists
        them), committed ones stay committed exactly once.
        """
        keys = {state: "XID:1:%s:01:metaq-ref-harness" % (bytes(state, "ascii").hex(),)
                for state in ("start", "inuse", "prepared", "committed", "rolledback")}
        for state, key in keys.items():
            self.tx("BEGIN", key)
            if state != "start":
                self.put(state.encode(), key)
        self.tx("PREPARE", keys["prepared"])
        self.tx("COMMIT_ONE_PHASE", keys["committed"])
        self.tx("ROLLBACK", keys["rolledback"])
        self.assertEqual(self.visible(), [b"committed"])
        self.restart()
        self.assertEqual(self.visible(), [b"committed"])
        self.assertEqual(self.tx("RECOVER", "null"), (200, keys["prepared"]))
        for state in ("start", "inuse", "rolledback", "committed"):
            self.assertEqual(self.tx("ROLLBACK", keys[state])[0], 500)
        self.assertEqual(self.tx("COMMIT_TWO_PHASE", keys["prepared"]), (200, ""))
        self.assertEqual(self.visible(), [b"committed", b"prepared"])
        self.restart()
        self.assertEqual(self.tx("RECOVER", "null"), (200, ""))
        self.assertEqual(self.visible(), [b"committed", b"prepared"])

    def test_heuristicCommit(self):
        """
        An operator commit of a prepared transaction is remembered (also
        across a restart): later commits get XA_HEURCOM, RECOVER lists it,
        FORGET drops it.
        """
        self.tx("BEGIN")
        self.put(b"h")
        self.tx("PREPARE")
        self.assertTrue(self.successResultOf(self.processor.commitHeuristically(XID)))
        self.assertEqual(self.visible(), [b"h"])
        self.restart()
        self.assertEqual(
            self.tx("COMMIT_TWO_PHASE"),
            (
                500,
                "XAException:code=7,msg=XA transaction '%s' has been heuristically "
                "committed." % (XID,),
            ),
        )
        self.assertEqual(self.tx("RECOVER", "null"), (200, XID))
        self.assertEqual(self.tx("FORGET"), (200, ""))
        self.assertEqual(self.tx("RECOVER", "null"), (200, ""))
        self.restart()
        self.assertEqual(self.tx("RECOVER", "null"), (200, ""))

    def test_heuristicRollbackAndComplete(self):
        self.tx("BEGIN")
        self.put(b"r")
        self.tx("PREPARE")
        self.tx("BEGIN", XID2)
        self.put(b"c", XID2)
        self.tx("PREPARE", XID2)
        self.assertTrue(self.successResultOf(self.processor.rollbackHeuristically(XID)))
        self.assertTrue(self.successResultOf(self.processor.completeHeuristically(XID2)))
        self.assertFalse(self.successResultOf(self.processor.rollbackHeuristically(XID)))
        self.assertEqual(self.tx("ROLLBACK")[1].split(",")[0], "XAException:code=6")
        self.assertEqual(self.tx("COMMIT_TWO_PHASE", XID2)[1].split(",")[0], "XAException:code=8")
        self.assertEqual(self.visible(), [])
        # A completed transaction is still prepared in the journal.
        self.restart()
        self.assertEqual(self.tx("RECOVER", "null"), (200, XID2 + "\r\n" + XID))
        self.assertEqual(self.tx("COMMIT_TWO_PHASE", XID2), (200, ""))
        self.assertEqual(self.visible(), [b"c"])


class BoundsTests(ProcessorTestCase):
    """
    What open transactions may hold: every one times out, at most
    C{maxTxTimeoutTimerCapacity} are open, their messages take at most
    C{maxTransactionBytes}.
    """

    def test_xaWithoutTimeoutTimesOut(self):
        """
        An XA transaction begun without a timeout, whose connection then
        closes, is rolled back after C{maxTxTimeoutInSeconds}; nothing stays
        held.
        """
        self.config.maxTxTimeoutInSeconds = 5
        self.assertEqual(self.tx("BEGIN", timeout=0), (200, ""))
        self.put(b"x" * 1000)
        self.assertEqual(self.processor.heldBytes, len(XID) + 1000)
        self.processor.sessionClosed(self.session)
        self.clock.advance(4.9)
        self.assertIn(XID, self.processor.xaTransactions)
        self.clock.advance(0.1)
        self.assertNotIn(XID, self.processor.xaTransactions)
        self.assertEqual(self.processor.heldBytes, 0)
        self.assertEqual(self.processor.openTransactions, set())

    def test_localWithoutTimeoutTimesOut(self):
        self.config.maxTxTimeoutInSeconds = 5
        self.tx("BEGIN", LOCAL)
        self.put(b"late", LOCAL)
        self.clock.advance(5)
        self.assertEqual(self.tx("COMMIT_ONE_PHASE", LOCAL)[0], 500)
        self.assertEqual(self.visible(), [])
        self.assertEqual(self.processor.heldBytes, 0)

    def test_timerCapacity(self):
        """
        Past C{maxTxTimeoutTimerCapacity} open transactions a BEGIN is
        refused with an XA error (or a plain one for a local transaction);
        a prepared or finished transaction frees its place.
        """
        self.config.maxTxTimeoutTimerCapacity = 2
        keys = ["XID:1:%02x:01:metaq-ref-harness" % (i,) for i in range(3)]
        self.assertEqual(self.tx("BEGIN", keys[0])[0], 200)
        self.assertEqual(self.tx("BEGIN", LOCAL)[0], 200)
        code, body = self.tx("BEGIN", keys[1])
        self.assertEqual(code, 500)
        self.assertIn("XAException:code=-3", body)
        self.assertIn("maxTxTimeoutTimerCapacity", body)
        self.assertNotIn(keys[1], self.processor.xaTransactions)
        code, body = self.tx("BEGIN", "TX:other:1")
        self.assertEqual(code, 500)
        self.assertIn("maxTxTimeoutTimerCapacity", body)
        self.put(b"prepared", keys[0])
        self.assertEqual(self.tx("PREPARE", keys[0]), (200, "0"))
        self.assertEqual(self.tx("BEGIN", keys[1])[0], 200)
        self.tx("ROLLBACK", LOCAL)
        self.assertEqual(self.tx("BEGIN", keys[2])[0], 200)

    def test_heldBytes(self):
        """
        A transactional put that would take the bytes held by unfinished
        transactions (prepared ones included) past C{maxTransactionBytes}
        is refused; ending a transaction frees its bytes.
        """
        other = "XID:1:ff:01:metaq-ref-harness"
        keys = len(XID) + len(other)
        self.config.maxTransactionBytes = keys + 10
        self.tx("BEGIN")
        self.assertEqual(self.put(b"12345678")[0], 200)
        self.tx("PREPARE")
        self.tx("BEGIN", other)
        code, body = self.put(b"abc", other)
        self.assertEqual(code, 500)
        self.assertIn("maxTransactionBytes", body)
        self.assertEqual(self.put(b"ab", other)[0], 200)
        self.tx("COMMIT_TWO_PHASE")
        self.assertEqual(self.processor.heldBytes, len(other) + 2)
        self.assertEqual(self.put(b"12345678", other)[0], 200)
        self.assertEqual(self.tx("COMMIT_ONE_PHASE", other), (200, ""))
        self.assertEqual(self.visible(), [b"12345678", b"ab", b"12345678"])
        self.assertEqual(self.processor.heldBytes, 0)

    def test_keysCounted(self):
        """
        Transaction keys (up to a header line long) count against
        C{maxTransactionBytes}: a BEGIN past it is refused.
        """
        longKey = "XID:1:%s:01:metaq-ref-harness" % ("ab" * 5000,)
        self.config.maxTransactionBytes = 15000
        self.assertEqual(self.tx("BEGIN", longKey)[0], 200)
        code, body = self.tx("BEGIN", longKey.replace("ab", "cd", 1))
        self.assertEqual(code, 500)
        self.assertIn("XAException:code=-3", body)
        self.assertIn("maxTransactionBytes", body)
        code, body = self.tx("BEGIN", "TX:%s:1" % ("x" * 6000,))
        self.assertEqual(code, 500)
        self.assertIn("maxTransactionBytes", body)
        self.assertEqual(self.tx("ROLLBACK", longKey)[0], 200)
        self.assertEqual(self.processor.heldBytes, 0)
        self.assertEqual(self.tx("BEGIN", "TX:%s:1" % ("x" * 6000,))[0], 200)

    def test_recoveredPreparedCounted(self):
        self.tx("BEGIN")
        self.put(b"kept")
        self.tx("PREPARE")
        self.restart()
        self.assertEqual(self.processor.heldBytes, len(XID) + 4)
        self.assertEqual(self.tx("COMMIT_TWO_PHASE"), (200, ""))
        self.assertEqual(self.processor.heldBytes, 0)

    def test_putRefusedByJournalNotCommitted(self):
        """
        A transactional put the journal could not write (a full disk) is
        answered 500 and is not part of the commit.
        """
        self.tx("BEGIN")
        self.assertEqual(self.put(b"kept")[0], 200)
        redo = self.processor.store._redo
        append = redo.append

        def full(record):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        redo.append = full
        code, body = self.put(b"refused")
        self.assertEqual(code, 500)
        self.assertIn("No space left on device", body)
        redo.append = append
        self.assertEqual(self.tx("COMMIT_ONE_PHASE"), (200, ""))
        self.assertEqual(self.visible(), [b"kept"])
        self.assertEqual(self.processor.heldBytes, 0)

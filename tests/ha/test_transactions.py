"""
Tests for L{metamorphosis.ha.transactions}: replicating brokers refuse
transactions as the Java samsa/gregor processors do.
"""

from twisted.trial.unittest import SynchronousTestCase

from metamorphosis.ha.transactions import NoTransactions
from metamorphosis.protocol.commands import PutCommand, ResultCommand, TransactionCommand


class NoTransactionsTests(SynchronousTestCase):
    def setUp(self):
        self.puts = []
        self.processor = NoTransactions(lambda command, session: self.puts.append((command, session)) or "stored")

    def command(self, type):
        return TransactionCommand("TX:s:1", "s", type, 5)

    def test_unsupported(self):
        expected = {
            "BEGIN": "Unsupported beginTransaction",
            "PREPARE": "Unsupported prepareTransaction",
            "COMMIT_ONE_PHASE": "Unsupported commitTransaction",
            "COMMIT_TWO_PHASE": "Unsupported commitTransaction",
            "ROLLBACK": "Unsupported rollbackTransaction",
            "FORGET": "Unsupported forgetTransaction",
            "RECOVER": "Unsupported getPreparedTransactions",
        }
        for type, text in expected.items():
            self.assertEqual(
                self.processor.processTransaction(self.command(type), None), ResultCommand(500, text.encode(), 5)
            )

    def test_endUnanswered(self):
        self.assertIsNone(self.processor.processTransaction(self.command("END"), None))

    def test_putIsPlain(self):
        """
        A put with a transaction key is stored as a plain put.
        """
        put = PutCommand("t", 0, b"x", 0, 3, -1, "TX:s:1")
        self.assertEqual(self.processor.processPut(put, "session"), "stored")
        self.assertEqual(self.puts, [(put, "session")])

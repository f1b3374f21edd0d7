"""
Tests for the transaction admin socket and C{metamorphosis.tools.txadmin}.
"""

import io
import shutil
import tempfile

from twisted.internet import reactor
from twisted.internet.defer import ensureDeferred, maybeDeferred
from twisted.trial.unittest import TestCase

from metamorphosis.broker.config import MetaConfig
from metamorphosis.broker.stats import StatsManager
from metamorphosis.broker.transactions.processor import TransactionalProcessor
from metamorphosis.protocol.commands import PutCommand, TransactionCommand
from metamorphosis.protocol.ids import IdWorker
from metamorphosis.tools import txadmin
from metamorphosis.tools.cli import ToolError
from tests.broker.txsupport import MemoryStoreManager

XID = "XID:1:0a0b:01:tool"


class Session:
    def __init__(self):
        self.context = {}


class TxAdminToolTests(TestCase):
    async def setUpProcessor(self):
        # A short directory: UNIX socket paths are limited to ~107 bytes.
        directory = tempfile.mkdtemp(prefix="txadm")
        self.addCleanup(shutil.rmtree, directory, True)
        self.config = MetaConfig(dataPath=directory, checkpointInterval=0)
        self.manager = MemoryStoreManager()
        self.processor = TransactionalProcessor(
            self.config, self.manager, IdWorker(0), StatsManager(self.config, self.manager)
        )
        await self.processor.startService()
        self.addCleanup(self.processor.stopService)
        session = Session()
        for command in [
            TransactionCommand(XID, "s", "BEGIN", 1, 0, "tool"),
            PutCommand("t", 0, b"held", 0, 2, -1, XID),
            TransactionCommand(XID, "s", "PREPARE", 3, 0, "tool"),
        ]:
            if isinstance(command, PutCommand):
                reply = self.processor.processPut(command, session)
            else:
                reply = await maybeDeferred(self.processor.processTransaction, command, session)
            self.assertEqual(reply.code, 200)

    async def tool(self, *argv):
        out = io.StringIO()
        options = txadmin.Options()
        options.parseOptions(["--data-path", self.config.dataPath, *argv])
        try:
            code = await txadmin.main(reactor, options, out)
        except ToolError:
            code = 1
        return code, out.getvalue()

    def test_listCommitForget(self):
        async def go():
            await self.setUpProcessor()
            self.assertEqual(await self.tool("list"), (0, XID + " PREPARED\n"))
            self.assertEqual(await self.tool("commit", XID), (0, "commit: " + XID + "\n"))
            records = self.manager.getStore("t", 0).records()
            self.assertEqual([r.data for r in records], [b"held"])
            self.assertEqual(await self.tool("list"), (0, XID + " HEURISTIC_COMMIT\n"))
            self.assertEqual((await self.tool("commit", XID))[0], 1)
            self.assertEqual((await self.tool("forget", XID))[0], 0)
            self.assertEqual(await self.tool("list"), (0, ""))

        return ensureDeferred(go())

    def test_unreachable(self):
        async def go():
            self.config = MetaConfig(dataPath=self.mktemp())
            self.assertEqual((await self.tool("list"))[0], 1)

        return ensureDeferred(go())

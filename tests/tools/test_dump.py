"""
metaq dump on the segment files of a real broker, and on damaged copies.
"""

import os
import shutil

from twisted.internet import reactor
from twisted.internet.defer import ensureDeferred
from twisted.trial.unittest import TestCase

from metamorphosis.protocol.records import encodePayload
from metamorphosis.tools.cli import openBroker
from tests.tools.support import brokerUrl, runMetaq, startBroker

SEGMENT = "00000000000000000000.meta"


class DumpTests(TestCase):
    timeout = 60

    async def _segment(self):
        """
        A broker's partition directory holding three messages of 10 bytes,
        the second with an attribute.
        """
        broker = await startBroker(self, {"d": 1})
        client = await openBroker(reactor, brokerUrl(broker), 5.0)
        self.addCleanup(client.transport.loseConnection)
        for data, flag in [(b"0123456789", 0), encodePayload(b"abcdefghij", "attr"),
                           (b"9876543210", 0)]:
            self.assertEqual((await client.put("d", 0, data, flag)).code, 200)
        return broker.partitionDir("d", 0)

    def test_dump(self):
        """
        One line per record: offset, size, id, flag, attribute and data;
        a directory is its segment files; --max-records stops early.  The
        zeros the running broker keeps after its records end the dump
        without a line.
        """
        async def check():
            directory = await self._segment()
            out, err, status = await runMetaq("dump", "--print-data", directory)
            self.assertEqual(status, 0, err)
            lines = out.splitlines()
            self.assertEqual(len(lines), 3)
            self.assertRegex(lines[0], r"^offset: 0 size: 30 id: -?\d+ flag: 0 data: b'0123456789'$")
            self.assertRegex(lines[1], r"^offset: 30 size: 38 id: -?\d+ flag: 1 "
                                       r"attribute: 'attr' data: b'abcdefghij'$")
            self.assertTrue(lines[2].startswith("offset: 68 size: 30 "))
            out, err, status = await runMetaq("dump", "-n", "1",
                                              os.path.join(directory, SEGMENT))
            self.assertEqual((status, len(out.splitlines())), (0, 1), err)
        return ensureDeferred(check())

    def test_damaged(self):
        """
        A changed byte ends the dump at its record with the reason (exit
        1); so does a last record cut short; a file that is not a segment
        is refused.
        """
        async def check():
            directory = await self._segment()
            damaged = self.mktemp()
            os.makedirs(damaged)
            path = os.path.join(damaged, SEGMENT)
            shutil.copy(os.path.join(directory, SEGMENT), path)
            with open(path, "r+b") as f:
                f.seek(30 + 25)
                f.write(b"X")
            out, err, status = await runMetaq("dump", path)
            self.assertEqual(status, 1)
            self.assertEqual(len(out.splitlines()), 2)
            self.assertIn("offset 30: Invalid message at 30", err)
            shutil.copy(os.path.join(directory, SEGMENT), path)
            with open(path, "r+b") as f:
                f.truncate(68 + 25)
            out, err, status = await runMetaq("dump", path)
            self.assertEqual((status, len(out.splitlines()) - 1), (1, 2))
            self.assertIn("offset 68: incomplete last record (25 of 30 bytes)", err)
            # Zeroed bytes with a record after them are no tail.
            shutil.copy(os.path.join(directory, SEGMENT), path)
            with open(path, "r+b") as f:
                f.seek(30)
                f.write(bytes(38))
            out, err, status = await runMetaq("dump", path)
            self.assertEqual((status, len(out.splitlines()) - 1), (1, 1))
            self.assertIn("offset 30: zero-filled bytes", err)
            other = os.path.join(damaged, "notes.txt")
            open(other, "w").close()
            out, err, status = await runMetaq("dump", other)
            self.assertEqual(status, 1)
            self.assertIn("not a segment file", err)
        return ensureDeferred(check())

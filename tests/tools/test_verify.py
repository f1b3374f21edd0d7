"""
metaq verify on the partitions of a real broker, and on damaged copies.
"""

import os
import shutil

from twisted.internet import reactor
from twisted.internet.defer import ensureDeferred
from twisted.trial.unittest import TestCase

from metamorphosis.tools.cli import openBroker
from tests.tools.support import brokerUrl, runMetaq, startBroker

SEGMENT = "00000000000000000000.meta"


class VerifyTests(TestCase):
    timeout = 60

    def test_verify(self):
        """
        A broker's partitions check out (a data directory: each partition);
        a changed byte is reported as a damaged range with its offsets
        (exit 1); a cut last record is reported, and is no damage; a
        directory without partitions is refused.
        """
        async def check():
            broker = await startBroker(self, {"v": 2})
            client = await openBroker(reactor, brokerUrl(broker), 5.0)
            self.addCleanup(client.transport.loseConnection)
            for partition in (0, 1):
                for _ in range(3):
                    reply = await client.put("v", partition, b"0123456789", 0)
                    self.assertEqual(reply.code, 200)
            data = os.path.dirname(broker.partitionDir("v", 0))
            out, err, status = await runMetaq("verify", data)
            self.assertEqual(status, 0, err)
            self.assertIn("v-0: 1 segment(s), 3 record(s), ok", out)
            self.assertIn("v-1: 1 segment(s), 3 record(s), ok", out)

            copy = os.path.abspath(self.mktemp())
            shutil.copytree(broker.partitionDir("v", 0), copy)
            with open(os.path.join(copy, SEGMENT), "r+b") as f:
                f.seek(30 + 25)
                f.write(b"X")
            out, err, status = await runMetaq("verify", copy)
            self.assertEqual(status, 1)
            self.assertIn("DAMAGED", out)
            self.assertIn("%s: damaged from offset 30 to 60 (30 bytes)" % (SEGMENT,), out)
            self.assertIn("1 of 1 partition(s) damaged", err)

            shutil.copy(os.path.join(broker.partitionDir("v", 0), SEGMENT),
                        os.path.join(copy, SEGMENT))
            with open(os.path.join(copy, SEGMENT), "r+b") as f:
                f.truncate(60 + 25)
            out, err, status = await runMetaq("verify", copy)
            self.assertEqual(status, 0, err)
            self.assertIn("%s: offset 60: incomplete last record (cut at the broker's next "
                          "start)" % (SEGMENT,), out)

            # Two segments with a gap between them.
            gap = os.path.abspath(self.mktemp())
            os.makedirs(gap)
            for name in (SEGMENT, "00000000000000000100.meta"):
                shutil.copy(os.path.join(broker.partitionDir("v", 0), SEGMENT),
                            os.path.join(gap, name))
                # Without the zeros the running broker keeps after them.
                os.truncate(os.path.join(gap, name), 90)
            out, err, status = await runMetaq("verify", gap)
            self.assertEqual(status, 1)
            self.assertIn("2 segment(s), 6 record(s), DAMAGED", out)
            self.assertIn("%s ends at offset 90 but the next segment starts at 100" % (SEGMENT,),
                          out)

            empty = os.path.abspath(self.mktemp())
            os.makedirs(empty)
            out, err, status = await runMetaq("verify", empty)
            self.assertEqual(status, 1)
            self.assertIn("no segment files", err)
        return ensureDeferred(check())

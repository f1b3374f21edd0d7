"""
The dashboard page in a real browser (headless Chromium): it loads, shows
the topics that were put to, and updates itself.
"""

import os
import struct

from kazoo.client import KazooClient
from twisted.internet import reactor
from twisted.internet.defer import ensureDeferred
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from tests.broker.httpsupport import HttpBroker
from tests.browser import Browser, chromiumPath
from tests.zookeeper import uniqueRoot

# The cells of the topics table, row by row, as text.
TOPIC_ROWS = """Array.from(document.querySelectorAll('#topics tbody tr'))
  .map(r => Array.from(r.cells).map(c => c.textContent))"""


class DashboardTests(TestCase):
    def setUp(self):
        chromiumPath()

    def test_showsAndUpdates(self):
        """
        The page shows the broker's identity and the partitions put to;
        while messages are put it refreshes itself: the counts grow and
        the put rate column shows them; and a screenshot of it is a real
        picture.
        """
        async def check():
            # With the suite's ZooKeeper when there is one, to show a group.
            zookeeper = os.environ.get("METAQ_TEST_ZK")
            root = uniqueRoot()
            broker = await HttpBroker.start(self, {"dash-topic": 2}, zookeeper, root)
            await broker.put("dash-topic", 1, [b"m%d" % (i,) for i in range(3)])
            if zookeeper:
                zk = KazooClient(hosts=zookeeper)
                await deferToThread(zk.start, 10)
                self.addCleanup(deferToThread, zk.stop)
                await deferToThread(zk.create, root + "/consumers/dash-group/offsets/dash-topic/3-1",
                                    b"5-23", makepath=True)
            browser = Browser(self)
            await browser.open(broker.url)
            await browser.waitFor("Number((document.querySelector('#refreshes') || {}).textContent) >= 1")
            self.assertEqual(await browser.text("#broker-id"), "3")
            self.assertEqual(await browser.text("#role"), "master")
            self.assertEqual(await browser.text("#ready"), "ready")
            # The fenced badge is not shown (rendered: no layout box).
            self.assertIs(await browser.evaluate(
                "document.querySelector('#fenced').getClientRects().length === 0"), True)
            rows = await browser.evaluate(TOPIC_ROWS)
            self.assertIn(["dash-topic", "3-1", "3"], [row[:3] for row in rows])
            if zookeeper:
                await browser.waitFor("document.querySelector('#groups tbody').textContent"
                                      ".includes('dash-group')")
                groups = await browser.evaluate(TOPIC_ROWS.replace("#topics", "#groups"))
                self.assertEqual(groups[0][:6], ["dash-group", "0", "dash-topic", "3-1", "-", "23"])

            # Put while the page polls: it shows the new count by itself,
            # and a positive rate for the partition.
            for round in range(40):
                await broker.put("dash-topic", 1, [b"more"] * 5)
                rows = await browser.evaluate(TOPIC_ROWS)
                [row] = [r for r in rows if r[:2] == ["dash-topic", "3-1"]]
                if int(row[2]) > 3 and row[7] not in ("-", "0.0"):
                    break
                await deferLater(reactor, 0.5, lambda: None)
            else:
                self.fail("the page did not update: %r" % (rows,))
            self.assertGreater(float(row[7]), 0)
            self.assertGreaterEqual(int(await browser.text("#refreshes")), 2)

            path = os.path.abspath("dashboard.png")
            await browser.screenshot(path)
            with open(path, "rb") as f:
                png = f.read()
            self.assertEqual(png[:8], b"\x89PNG\r\n\x1a\n")
            width, height = struct.unpack(">II", png[16:24])
            self.assertGreaterEqual((width, height), (800, 600))
            self.assertGreater(len(png), 20000)
        return ensureDeferred(check())

"""
The stats tool against a real broker process.
"""

from twisted.internet import reactor
from twisted.internet.defer import ensureDeferred
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from metamorphosis.tools.cli import openBroker
from metamorphosis.tools.stats import parseStats, rates
from tests.tools.support import brokerUrl, closedPort, runTool, startBroker


class ParsingTests(TestCase):
    def test_parseStats(self):
        """
        Integer-valued lines become counters; the rest is left out.
        """
        body = "STATS\r\npid 12\r\nversion 1.4.6.2\r\ncmd_put 7\r\nEND\r\n"
        self.assertEqual(parseStats(body), {"pid": 12, "cmd_put": 7})

    def test_rates(self):
        """
        Rates are per second, only for the cmd_* counters seen before.
        """
        before = {"cmd_put": 10, "cmd_get": 4, "uptime": 3}
        after = {"cmd_put": 30, "cmd_get": 4, "cmd_offset": 9, "uptime": 5}
        self.assertEqual(rates(before, after, 2.0), [("cmd_put", 10.0), ("cmd_get", 0.0)])


class StatsToolTests(TestCase):
    async def _broker(self):
        self.broker = await startBroker(self, {"meta-test": 1})
        return brokerUrl(self.broker)

    def test_summary(self):
        """
        Without an item the broker's summary is printed as it sends it.
        """
        async def check():
            url = await self._broker()
            out, err, status = await runTool("stats", "--broker", url)
            self.assertEqual(status, 0, err)
            lines = out.splitlines()
            self.assertEqual((lines[0], lines[-1]), ("STATS", "END"))
            self.assertIn("port %d" % (self.broker.port,), lines)
            self.assertIn("cmd_put 0", lines)
        return ensureDeferred(check())

    def test_watchRates(self):
        """
        --watch repeats the query and prints the rates of the cmd_*
        counters: puts made between two replies show in cmd_put/s.
        """
        async def check():
            url = await self._broker()
            client = await openBroker(reactor, url, 5.0)
            self.addCleanup(client.transport.loseConnection)
            for _ in range(20):
                reply = await client.put("meta-test", 0, b"x", 0)
                self.assertEqual(reply.code, 200)
            process = runTool("stats", "--broker", url, "--watch", "1", "--count", "2")
            while not process.called:
                await client.put("meta-test", 0, b"x", 0)
                await deferLater(reactor, 0.05, lambda: None)
            out, err, status = await process
            self.assertEqual(status, 0, err)
            self.assertEqual(out.count("--- " + url), 2)
            rate = [line for line in out.splitlines() if line.startswith("cmd_put/s ")]
            self.assertEqual(len(rate), 1, out)
            self.assertGreater(float(rate[0].split()[1]), 0)
        return ensureDeferred(check())

    def test_item(self):
        """
        An item is passed on: 'offsets' lists the partition stores.
        """
        async def check():
            url = await self._broker()
            client = await openBroker(reactor, url, 5.0)
            self.addCleanup(client.transport.loseConnection)
            await client.put("meta-test", 0, b"abc", 0)
            out, err, status = await runTool("stats", "--broker", url, "offsets")
            self.assertEqual(status, 0, err)
            self.assertIn("meta-test part 0 min_offset 0 max_offset 23", out.splitlines())
        return ensureDeferred(check())

    def test_unreachable(self):
        """
        A broker that does not answer: one line on stderr, exit status 1.
        """
        async def check():
            out, err, status = await runTool("stats", "--broker", "127.0.0.1:%d" % closedPort())
            self.assertEqual(status, 1)
            self.assertIn("cannot connect to the broker", err)
            self.assertNotIn("Traceback", err)
        return ensureDeferred(check())

    def test_badUsage(self):
        """
        A malformed broker address is a usage error (status 2).
        """
        async def check():
            out, err, status = await runTool("stats", "--broker", "nowhere")
            self.assertEqual(status, 2)
            self.assertIn("Invalid broker url", err)
            self.assertNotIn("Traceback", err)
        return ensureDeferred(check())

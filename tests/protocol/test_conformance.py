"""
The broker against the captured Java exchanges: each broker configuration
of the captures is started as C{twistd metaq --config server.ini} would
start it (same options, same service), with ZooKeeper, and the scenarios
recorded against it are replayed in their recorded order
(L{tests.protocol.conformance} says what is compared and what may differ).

One test per configuration, because each scenario depends on the broker
state the ones before it left; a failure lists every scenario that
differed, with its first differences.
"""

import re
import shutil
import zlib
from pathlib import Path

from twisted.internet import defer, reactor
from twisted.trial.unittest import SynchronousTestCase, TestCase

from metamorphosis.broker.service import Options, makeService
from tests.captures import capturePath, manifest
from tests.protocol.conformance import Comparison, Frame, readRequests, replayScenario
from tests.zookeeper import uniqueRoot, zookeeperAddress

#: Differences shown per failing scenario.
SHOWN = 6


def brokerConfigFile(source, target, zookeeper, root, data):
    """
    Copy a captured C{server.ini} to C{target} with this test's data
    directory, ZooKeeper address and root, and no wait after unregistering
    (the Java broker's C{zk.zkSyncTimeMs} pause only slows the test down).

    @return: the bytes written, which C{stats config} must answer with.
    """
    text = source.read_text(encoding="utf-8")
    replacements = {
        "dataPath": data,
        "dataLogPath": data,
        "zk.zkConnect": zookeeper,
        "zk.zkSyncTimeMs": "0",
    }
    for key, value in replacements.items():
        text, count = re.subn(r"(?m)^%s=.*$" % (re.escape(key),), "%s=%s" % (key, value), text)
        assert count == 1, (source, key)
    text = re.sub(r"(?m)^(zk\.zkConnect=.*)$", r"\1\nzk.zkRoot=%s" % (root,), text)
    target.write_text(text, encoding="utf-8")
    return target.read_bytes()


class ConformanceTests(TestCase):
    """
    Every captured scenario, replayed against our broker.
    """

    timeout = 300

    async def startBroker(self, configName):
        """
        Start the broker of one captured configuration on a free port, the
        way C{twistd metaq --config} does.

        @return: the port and the bytes of the configuration file.
        """
        work = Path(self.mktemp())
        shutil.copytree(capturePath("conf", configName), work / "conf")
        ini = work / "conf" / "server.ini"
        configFile = brokerConfigFile(ini, ini, zookeeperAddress(), uniqueRoot("metaq-conformance"),
                                      str((work / "data").resolve()))
        options = Options()
        # The captured files ask for the HTTP endpoint on port 8120: not here.
        options.parseOptions(["--config", str(ini), "--port", "tcp:0:interface=127.0.0.1", "--http", "none"])
        broker = makeService(options)
        broker.startService()
        self.addCleanup(broker.stopService)
        port = await broker.started
        return port.getHost().port, configFile

    async def replay(self, configName):
        captured = manifest()
        scenarios = sorted((s for s in captured["scenarios"] if s["config"] == configName),
                           key=lambda s: s["order"])
        self.assertTrue(scenarios, configName)
        port, configFile = await self.startBroker(configName)
        comparison = Comparison(captured["configs"][configName]["port"], port, configFile)
        failed = []
        for scenario in scenarios:
            found = await replayScenario(reactor, scenario, port, comparison)
            if found:
                failed.append("%s:\n    %s" % (scenario["name"], "\n    ".join(found[:SHOWN])))
        if failed:
            self.fail("%d of %d scenarios differ from the Java broker:\n%s" % (
                len(failed), len(scenarios), "\n".join(failed)))

    def test_broker(self):
        """
        The main broker (scenarios 01 to 17, 20 and 21): producers,
        consumers, offsets, transactions, stats, malformed and pipelined
        requests, one-byte writes.
        """
        return defer.ensureDeferred(self.replay("broker"))

    def test_syncSlave(self):
        """
        A gregor (synchronous replication) slave answering the C{sync}
        commands of its samsa master (scenario 18).
        """
        return defer.ensureDeferred(self.replay("ha-sync-slave"))

    def test_asyncMaster(self):
        """
        A broker serving a producer and then the metaslave that replicates
        it (scenario 19).
        """
        return defer.ensureDeferred(self.replay("ha-async-master"))


def message(messageId, data, flag=0):
    """
    One stored message as a C{value} body holds it.
    """
    return (len(data).to_bytes(4, "big") + (zlib.crc32(data) & 0x7FFFFFFF).to_bytes(4, "big")
            + messageId.to_bytes(8, "big", signed=True) + flag.to_bytes(4, "big") + data)


class ComparisonTests(SynchronousTestCase):
    """
    What the replay lets differ, and what it does not.
    """

    def setUp(self):
        self.comparison = Comparison(8123, 40000, b"[system]\n")

    def check(self, request, expected, got):
        [request] = readRequests(request)
        return self.comparison.differences(request, expected, got)

    def test_valueIdsMasked(self):
        """
        Message ids in a C{value} body may differ, even where a C{get}
        starts inside a message; any other byte may not.
        """
        body = message(1, b"first") + message(2, b"second")
        ours = message(77, b"first") + message(78, b"second")
        get = b"get t g 0 0 1024 5\r\n"
        self.assertEqual(self.check(get, Frame("value", None, 5, body), Frame("value", None, 5, ours)), [])
        changed = message(77, b"first") + message(78, b"secoNd")
        self.assertEqual(len(self.check(get, Frame("value", None, 5, body), Frame("value", None, 5, changed))), 1)
        # From offset 3, inside the first message, whose layout is known now.
        get = b"get t g 0 3 1024 6\r\n"
        self.assertEqual(self.check(get, Frame("value", None, 6, body[3:]), Frame("value", None, 6, ours[3:])), [])

    def test_putReply(self):
        """
        A put's reply may have another message id, not another partition or
        offset.
        """
        put = b"put t 0 1 0 6\r\nx"
        expected = Frame("result", 200, 6, b"123 0 40")
        self.assertEqual(self.check(put, expected, Frame("result", 200, 6, b"-99 0 40")), [])
        self.assertEqual(len(self.check(put, expected, Frame("result", 200, 6, b"123 0 41"))), 1)
        self.assertEqual(len(self.check(put, expected, Frame("result", 500, 6, b"123 0 40"))), 1)

    def test_recordedPort(self):
        """
        Texts naming the Java broker's port must name the broker's own.
        """
        get = b"put nope 0 1 0 7\r\nx"
        recorded = Frame("result", 500, 7, b"Put message to [broker 'meta://127.0.0.1:8123'] failed")
        ours = Frame("result", 500, 7, b"Put message to [broker 'meta://127.0.0.1:40000'] failed")
        self.assertEqual(self.check(get, recorded, ours), [])
        self.assertEqual(len(self.check(get, recorded, recorded)), 1)

    def test_statsSummary(self):
        """
        Process figures of the summary need only the same shape; the broker
        id must be equal and the port the broker's.
        """
        stats = b"stats  8\r\n"

        def summary(pid, brokerId, port):
            return Frame("result", 200, 8, b"STATS\r\npid %s\r\nbroker_id %d\r\nport %d\r\nEND\r\n" % (
                pid, brokerId, port))

        recorded = summary(b"9559", 0, 8123)
        self.assertEqual(self.check(stats, recorded, summary(b"1", 0, 40000)), [])
        self.assertEqual(len(self.check(stats, recorded, summary(b"x", 0, 40000))), 1)
        self.assertEqual(len(self.check(stats, recorded, summary(b"1", 1, 40000))), 1)
        self.assertEqual(len(self.check(stats, recorded, summary(b"1", 0, 8123))), 1)
        # Lines of our own may follow the Java broker's, not come before them.
        extended = Frame("result", 200, 8, summary(b"1", 0, 40000).body.replace(b"END", b"zk_state connected\r\nEND"))
        self.assertEqual(self.check(stats, recorded, extended), [])
        early = Frame("result", 200, 8, b"STATS\r\nzk_state connected\r\npid 1\r\nbroker_id 0\r\nport 40000\r\nEND\r\n")
        self.assertEqual(len(self.check(stats, recorded, early)), 1)

    def test_statsConfig(self):
        """
        C{stats config} must answer with the file the broker was started with.
        """
        stats = b"stats config 9\r\n"
        recorded = Frame("result", 200, 9, b"[system]\nrecorded\n")
        self.assertEqual(self.check(stats, recorded, Frame("result", 200, 9, b"[system]\n")), [])
        self.assertEqual(len(self.check(stats, recorded, recorded)), 1)

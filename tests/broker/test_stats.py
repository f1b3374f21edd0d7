"""
Tests for L{metamorphosis.broker.stats}: the texts of the C{stats} command.
"""

import os

from twisted.internet.task import Clock
from twisted.trial import unittest

from metamorphosis import METAQ_VERSION
from metamorphosis.broker.config import MetaConfig, TopicConfig, standaloneConfig
from metamorphosis.broker.stats import StatsManager, formatDecimal
from tests.broker.fakes import FakeStore, FakeStoreManager


def makeConfig():
    config = MetaConfig(brokerId=3, checksum=1784359023)
    config.topics = {
        "meta-test": TopicConfig("meta-test", stat=True),
        "test": TopicConfig("test", numPartitions=2, stat=True, acceptPublish=False),
        "bench": TopicConfig("bench"),
    }
    return config


class FormatTests(unittest.TestCase):
    def test_decimalFormat(self):
        self.assertEqual(formatDecimal(30.0), "30")
        self.assertEqual(formatDecimal(1.0), "1")
        self.assertEqual(formatDecimal(235 / 7), "33.57")
        self.assertEqual(formatDecimal(30 / 90), "0.33")
        self.assertEqual(formatDecimal(0.2), "0.2")
        self.assertEqual(formatDecimal(0.0), "0")
        # Half-even on the exact binary value: 0.125 is exact, so it rounds
        # to the even neighbour.
        self.assertEqual(formatDecimal(0.125), "0.12")
        self.assertEqual(formatDecimal(0.375), "0.38")


class StatsTests(unittest.TestCase):
    def setUp(self):
        self.clock = Clock()
        self.clock.advance(1000)
        self.stores = FakeStoreManager()
        self.config = makeConfig()
        self.stats = StatsManager(self.config, self.stores, clock=self.clock.seconds)

    def lines(self, item):
        text = self.stats.statsInfo(item)
        self.assertTrue(text.startswith("STATS\r\n"))
        self.assertTrue(text.endswith("END\r\n"))
        return text.split("\r\n")[1:-2]

    def test_summary(self):
        self.stores.add("test", 0).add(3, 100)
        self.stores.add("test", 1).add(1, 40)
        self.stats.statsPut("test", "3-0")
        self.stats.statsGet("test", "g")
        self.stats.statsGetMiss("test", "g")
        self.stats.statsPutFailed("x", "3-0")
        self.stats.statsTxBegin(True)
        self.stats.connections = 4
        self.stats.port = 9999
        self.clock.advance(65.5)
        lines = self.lines(None)
        self.assertEqual([line.split(" ")[0] for line in lines], [
            "pid", "broker_id", "port", "uptime", "version", "slave", "curr_connections",
            "threads", "cmd_put", "cmd_get", "cmd_offset", "tx_begin", "tx_xa_begin",
            "tx_commit", "tx_rollback", "get_miss", "put_failed", "total_messages",
            "topics", "config_checksum"])
        values = dict(line.split(" ", 1) for line in lines)
        self.assertEqual(values["pid"], str(os.getpid()))
        self.assertEqual(values["broker_id"], "3")
        self.assertEqual(values["port"], "9999")
        self.assertEqual(values["uptime"], "65")
        self.assertEqual(values["version"], METAQ_VERSION)
        self.assertEqual(values["slave"], "false")
        self.assertEqual(values["curr_connections"], "4")
        self.assertGreaterEqual(int(values["threads"]), 1)
        self.assertEqual(values["cmd_put"], "1")
        self.assertEqual(values["cmd_get"], "1")
        self.assertEqual(values["get_miss"], "1")
        self.assertEqual(values["put_failed"], "1")
        self.assertEqual(values["tx_begin"], "1")
        self.assertEqual(values["tx_xa_begin"], "1")
        self.assertEqual(values["total_messages"], "4")
        # test has stores; meta-test and bench are configured without one.
        self.assertEqual(values["topics"], "3")
        self.assertEqual(values["config_checksum"], "1784359023")
        self.assertEqual(self.lines(""), self.lines(None))

    def test_topics(self):
        self.stores.add("test", 0).add(3, 100)
        self.stores.add("test", 1).add(1, 40)
        self.assertEqual(self.lines("topics"), [
            "test partitions 2 message_count 4 message_bytes 140 accept_publish false "
            "accept_subscribe true",
            "bench *Empty*",
            "meta-test *Empty*",
        ])

    def test_offsets(self):
        self.stores.add("test", 1).add(1, 40)
        self.stores.add("test", 0, FakeStore(minOffset=1024))
        self.assertEqual(self.lines("offsets"), [
            "test part 1 min_offset 0 max_offset 40",
            "test part 0 min_offset 1024 max_offset 1024",
        ])

    def test_help(self):
        self.assertEqual(self.stats.statsInfo("help"), (
            "STATS\r\n*EMPTY* Returns broker info.\r\nhelp Returns help menu.\r\n"
            "topics Returns topics statistics detail info.\r\n"
            "offsets Returns partitions detail info.\r\n"
            "realtime Returns realtime statistics detail info.\r\n"
            "config Returns broker's config file content.\r\nEND\r\n"))

    def test_realtime(self):
        self.assertEqual(self.lines("realtime"), [
            "realtime_put null", "realtime_get null", "realtime_offset null",
            "realtime_get_miss null", "realtime_put_failed null",
            "realtime_message_size null"])
        for size in (30, 40, 35):
            self.stats.statsPut("meta-test", "3-0")
            self.stats.statsMessageSize("meta-test", size)
        self.stats.statsPut("test", "3-1")
        self.stats.statsMessageSize("test", 10)
        self.stats.statsPut("bench", "3-0")  # stat=false: not recorded
        self.clock.advance(90)
        lines = self.lines("realtime")
        self.assertEqual(lines[0], "realtime_put Count=4,Value=4,Value/Count=1,"
                                   "Count/Duration=0.04,Duration=90")
        self.assertEqual(lines[5], "realtime_message_size Count=4,Value=115,"
                                   "Value/Count=28.75,Count/Duration=0.04,Duration=90")
        self.assertEqual(lines[1], "realtime_get null")

    def test_putMessage(self):
        """
        L{StatsManager.statsPutMessage} counts what L{StatsManager.statsPut}
        and L{StatsManager.statsMessageSize} count (stat topics or not).
        """
        separate = StatsManager(self.config, self.stores, clock=self.clock.seconds)
        for topic, partition, size in (("meta-test", "3-0", 30), ("test", "3-1", 10),
                                       ("bench", "3-0", 5), ("meta-test", "3-0", 7)):
            self.stats.statsPutMessage(topic, partition, size)
            separate.statsPut(topic, partition)
            separate.statsMessageSize(topic, size)
        self.clock.advance(90)
        for item in (None, "topics", "realtime"):
            self.assertEqual(self.stats.statsInfo(item), separate.statsInfo(item))
        self.assertEqual(self.stats.putsByPartition, separate.putsByPartition)
        self.assertEqual(self.stats.putBytesByTopic, separate.putBytesByTopic)

    def test_reset(self):
        self.stats.statsGet("test", "g")
        self.clock.advance(10)
        self.assertEqual(self.stats.statsInfo("reset"), "STATS\r\nreset ok\r\nEND\r\n")
        self.assertEqual(self.lines("realtime")[1], "realtime_get Count=0,Value=0,"
                         "Value/Count=invalid,Count/Duration=invalid,Duration=0")
        # The summary counters are not reset.
        self.assertIn("cmd_get 1", self.lines(None))

    def test_topic(self):
        self.stores.add("meta-test", 0).add(2, 120)
        self.stats.statsPut("meta-test", "3-0")
        self.stats.statsPut("test", "3-0")
        self.stats.statsGet("test", "g")
        self.clock.advance(5)
        self.assertEqual(self.lines("meta-test"), [
            "meta-test", "resultCode 0", "partitions 1", "message_count 2", "bytes 120",
            "topic_realtime_put Count=1,Value=1,Value/Count=1,Count/Duration=0.2,Duration=5",
            "topic_realtime_get Invalid keyTwo:meta-test",
            "topic_realtime_offset null",
            "topic_realtime_get_miss null",
            "topic_realtime_put_failed null",
            "topic_realtime_message_size null",
        ])
        self.assertEqual(self.lines("bench")[:5], [
            "bench", "resultCode 2", "partitions 0", "message_count 0", "bytes 0"])
        self.assertEqual(self.lines("nope")[:2], ["nope", "resultCode 1"])

    def test_extraItem(self):
        """
        An item of ours answers its own lines and leaves the summary exactly
        the Java broker's.
        """
        summary = self.lines(None)
        self.stats.extraItems["zookeeper"] = lambda: [("zk_state", "connected"), ("zk_registered", True)]
        self.assertEqual(self.lines("zookeeper"), ["zk_state connected", "zk_registered true"])
        self.assertEqual([line.split()[0] for line in self.lines(None)],
                         [line.split()[0] for line in summary])

    def test_standaloneStatTopics(self):
        config = standaloneConfig()
        config.stat = False
        stats = StatsManager(config, self.stores, clock=self.clock.seconds)
        self.assertFalse(stats.isStatTopic("any"))
        config.stat = True
        self.assertTrue(stats.isStatTopic("any"))

    def test_wildcardStat(self):
        self.config.topics["logs-*"] = TopicConfig("logs-*", stat=True)
        self.assertTrue(self.stats.isStatTopic("logs-a"))
        self.assertFalse(self.stats.isStatTopic("bench"))

    def test_statTopicsFollowReload(self):
        self.assertFalse(self.stats.isStatTopic("new"))
        self.config.topics = dict(self.config.topics, new=TopicConfig("new", stat=True))
        self.assertTrue(self.stats.isStatTopic("new"))


class DamagedItemTests(unittest.TestCase):
    setUp = StatsTests.setUp
    lines = StatsTests.lines

    def test_damaged(self):
        """
        C{stats damaged}: the counts, then a line per read-only partition
        and per damaged range.
        """
        whole = self.stores.add("whole", 0)
        broken = self.stores.add("broken", 1, FakeStore())
        broken.readOnly = "segment file(s) cannot be opened: x"
        rotten = self.stores.add("rotten", 0, FakeStore())
        rotten.damaged = [(100, 180, "checksum mismatch")]
        self.stats.damagedGets = 3
        self.assertEqual(whole.readOnly, None)
        self.assertEqual(self.lines("damaged"), [
            "read_only_partitions 1", "damaged_ranges 1", "damaged_gets 3",
            "verified_segments 0", "verified_bytes 0",
            "broken part 1 read_only segment file(s) cannot be opened: x",
            "rotten part 0 damaged 100 180 80 checksum mismatch",
        ])

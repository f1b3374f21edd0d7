"""
Tests for L{metamorphosis.broker.config}: reading MetaQ's server.ini.
"""

import zlib

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial import unittest

from metamorphosis.broker.config import (
    SYSTEM_KEYS,
    ConfigError,
    closestKey,
    evaluateInteger,
    levenshtein,
    loadConfig,
    parseConfig,
    reloadTopics,
    standaloneConfig,
)
from tests.captures import capturePath

CONFORMANCE_INI = str(capturePath("conf", "broker", "server.ini"))

SAMPLE = b"""\
; comment
# another comment
[system]
brokerId=7
numPartitions=2
serverPort=8200
unflushThreshold=0
unflushInterval=10000
maxSegmentSize=1024*1024
maxTransferSize=512 * (1024 + 1024)
deleteWhen=0 0 6,18 * * ?
stat=true
updateConsumerOffsets=true
hostName=
dataPath=/tmp/meta-data

[zookeeper]
zk.zkEnable=false
zk.zkConnect=127.0.0.1:2181
zk.zkSessionTimeoutMs=30000
zk.zkRoot=meta2/

[topic=orders]
numPartitions=5
stat=false
group.audit=tests.broker.filters.EvenIds

[topic=logs-*]
acceptPublish=false
"""


class ParseTests(unittest.TestCase):
    def test_sample(self):
        config = parseConfig(SAMPLE, "server.ini")
        self.assertEqual(config.brokerId, 7)
        self.assertEqual(config.serverPort, 8200)
        self.assertEqual(config.maxSegmentSize, 1024 * 1024)
        self.assertEqual(config.maxTransferSize, 1024 * 1024)
        self.assertEqual(config.deleteWhen, "0 0 6,18 * * ?")
        self.assertIsNone(config.hostName)
        self.assertTrue(config.stat)
        self.assertTrue(config.updateConsumerOffsets)
        self.assertEqual(config.dataPath, "/tmp/meta-data")
        self.assertFalse(config.zookeeper.zkEnable)
        self.assertEqual(config.zookeeper.zkConnect, "127.0.0.1:2181")
        self.assertEqual(config.zookeeper.zkRoot, "/meta2")
        self.assertEqual(list(config.topics), ["orders", "logs-*"])
        orders = config.topicConfig("orders")
        self.assertEqual(orders.numPartitions, 5)
        self.assertFalse(orders.stat)
        self.assertEqual(orders.unflushThreshold, 0)
        self.assertTrue(orders.groupCommit)
        self.assertEqual(orders.filters, {"audit": "tests.broker.filters.EvenIds"})
        logs = config.topicConfig("logs-app")
        self.assertEqual(logs.topic, "logs-app")
        self.assertFalse(logs.acceptPublish)
        self.assertEqual(logs.numPartitions, 2)
        self.assertTrue(config.isLegalTopic("logs-x"))
        self.assertFalse(config.isLegalTopic("other"))
        self.assertEqual(config.checksum, zlib.crc32(SAMPLE))

    def test_conformanceFile(self):
        config = loadConfig(CONFORMANCE_INI)
        self.assertEqual(config.hostName, "127.0.0.1")
        self.assertEqual(config.numPartitionsOf("test"), 2)
        self.assertEqual(config.dataLogPath, "data")
        with open(CONFORMANCE_INI, "rb") as f:
            self.assertEqual(config.checksum, zlib.crc32(f.read()))

    def assertConfigError(self, text, *fragments):
        error = self.assertRaises(ConfigError, parseConfig, text.encode("utf-8"), "bad.ini")
        for fragment in ("bad.ini",) + fragments:
            self.assertIn(fragment, str(error))
        return error

    def test_unknownKeyHint(self):
        error = self.assertConfigError(
            "[system]\nbrokerid=1\n", "[system]", "brokerid")
        self.assertIn("Invalid config key:brokerid,do you mean 'brokerId'?", str(error))

    def test_unknownZookeeperKey(self):
        self.assertConfigError(
            "[zookeeper]\nzk.zkConect=x\n", "[zookeeper]",
            "Invalid config key:zk.zkConect,do you mean 'zk.zkConnect'?")

    def test_systemKeysAcceptedInZookeeperSection(self):
        config = parseConfig(b"[zookeeper]\nbrokerId=3\n")
        self.assertEqual(config.brokerId, 0)

    def test_topicSectionRejectsSystemOnlyKey(self):
        self.assertConfigError("[topic=a]\nmaxTransferSize=3\n", "[topic=a]", "maxTransferSize")

    def test_acceptedWithoutEffect(self):
        config = parseConfig(b"[system]\nlastModified=4\n[topic=a]\ntopic=zzz\nfilterClassNames=x\n")
        self.assertEqual(config.topicConfig("a").topic, "a")

    def test_badNumber(self):
        self.assertConfigError("[system]\nnumPartitions=two\n", "[system]", "numPartitions",
                               "'two'")

    def test_intOverflow(self):
        self.assertConfigError("[system]\nmaxSegmentSize=1024*1024*1024*4\n",
                               "maxSegmentSize", "32-bit")

    def test_badBoolean(self):
        self.assertConfigError("[topic=a]\nstat=yes\n", "[topic=a]", "stat", "true or false")

    def test_topicWithoutName(self):
        self.assertConfigError("[topic=]\nnumPartitions=1\n", "[topic=]", "without a name")

    def test_illegalTopicSections(self):
        """
        A topic section must name a legal topic, with C{*} as a wildcard.
        """
        for name in ("../x", "app/*", "/abs", "a b", ".."):
            self.assertConfigError(f"[topic={name}]\n", f"[topic={name}]",
                                   "Illegal topic name")

    def test_wildcardMatchesOnlyLegalNames(self):
        """
        C{*} in a section name matches legal characters only, so
        C{[topic=app*]} never accepts a path.
        """
        config = parseConfig(b"[topic=app*]\n[topic=*]\n")
        self.assertTrue(config.isLegalTopic("app.orders"))
        for topic in ("app/../../esc", "app/x", "../x", "app\x00", "x" * 250):
            self.assertFalse(config.isLegalTopic(topic), topic)

    def test_maxTopicNameLength(self):
        config = parseConfig(b"[system]\nmaxTopicNameLength=10\n[topic=*]\n")
        self.assertEqual(config.maxTopicNameLength, 10)
        self.assertTrue(config.isLegalTopic("a" * 10))
        self.assertFalse(config.isLegalTopic("a" * 11))
        self.assertConfigError("[system]\nmaxTopicNameLength=300\n", "maxTopicNameLength",
                               "between 1 and 249")

    def test_fsyncMethod(self):
        self.assertEqual(parseConfig(b"[system]\n[topic=a]\n").fsyncMethod, "auto")
        for method in ("auto", "kernel", "thread"):
            config = parseConfig(b"[system]\nfsyncMethod=%s\n[topic=a]\n" % method.encode())
            self.assertEqual(config.fsyncMethod, method)
        self.assertConfigError("[system]\nfsyncMethod=io_uring\n", "fsyncMethod",
                               "auto, kernel or thread")

    def test_maxConnections(self):
        self.assertEqual(parseConfig(b"[system]\n[topic=a]\n").maxConnections, 10000)
        self.assertEqual(parseConfig(b"[system]\nmaxConnections=0\n[topic=a]\n").maxConnections, 0)
        self.assertConfigError("[system]\nmaxConnections=-1\n", "maxConnections", "negative")

    def test_maxConnectionsPerHost(self):
        self.assertEqual(parseConfig(b"[system]\n[topic=a]\n").maxConnectionsPerHost, 1000)
        self.assertEqual(
            parseConfig(b"[system]\nmaxConnectionsPerHost=0\n[topic=a]\n").maxConnectionsPerHost,
            0)
        self.assertConfigError("[system]\nmaxConnectionsPerHost=-1\n", "maxConnectionsPerHost",
                               "negative")

    def test_framingLimits(self):
        """
        C{maxRequestBodySize} (64 MiB) and C{maxRequestLineLength} (64 KiB)
        are read and must be positive.
        """
        config = parseConfig(b"[system]\n[topic=a]\n")
        self.assertEqual((config.maxRequestBodySize, config.maxRequestLineLength),
                         (64 * 1024 * 1024, 64 * 1024))
        config = parseConfig(b"[system]\nmaxRequestBodySize=2097152\nmaxRequestLineLength=4096\n"
                             b"[topic=a]\n")
        self.assertEqual((config.maxRequestBodySize, config.maxRequestLineLength),
                         (2097152, 4096))
        self.assertConfigError("[system]\nmaxRequestBodySize=0\n", "maxRequestBodySize",
                               "positive")
        self.assertConfigError("[system]\nmaxRequestLineLength=-5\n", "maxRequestLineLength",
                               "positive")

    def test_diskKeepAwakeMicros(self):
        self.assertEqual(parseConfig(b"[system]\n[topic=a]\n").diskKeepAwakeMicros, 100)
        self.assertEqual(
            parseConfig(b"[system]\ndiskKeepAwakeMicros=0\n[topic=a]\n").diskKeepAwakeMicros, 0)
        self.assertConfigError("[system]\ndiskKeepAwakeMicros=-1\n", "diskKeepAwakeMicros", "negative")

    def test_idlePollMicros(self):
        self.assertEqual(parseConfig(b"[system]\n[topic=a]\n").idlePollMicros, None)
        self.assertEqual(
            parseConfig(b"[system]\nidlePollMicros=500\n[topic=a]\n").idlePollMicros, 500)
        self.assertConfigError("[system]\nidlePollMicros=-1\n", "idlePollMicros", "negative")

    def test_unknownSection(self):
        self.assertConfigError("[sytem]\nbrokerId=1\n", "[sytem]", "unknown section")

    def test_keyOutsideSection(self):
        self.assertConfigError("brokerId=1\n", "line 1", "outside any section")

    def test_nonPositivePartitions(self):
        self.assertConfigError("[topic=a]\nnumPartitions=0\n", "[topic=a]", "numPartitions")

    def test_emptyValueIsUnset(self):
        config = parseConfig(b"[system]\nnumPartitions=3\n[topic=a]\nnumPartitions=\n")
        self.assertEqual(config.numPartitionsOf("a"), 3)

    def test_gbkFile(self):
        """
        The Java sample files are GBK: comments in Chinese do not stop the
        parse, and the checksum is of the raw bytes.
        """
        data = "; 测试配置\n[system]\nbrokerId=2\n".encode("gbk")
        config = parseConfig(data, "gbk.ini")
        self.assertEqual(config.brokerId, 2)
        self.assertEqual(config.checksum, zlib.crc32(data))

    def test_duplicateSection(self):
        self.assertConfigError("[topic=a]\n[topic=a]\n", "line 2", "duplicate section")

    def test_colonSeparator(self):
        config = parseConfig(b"[zookeeper]\nzk.zkConnect : h:2181\n")
        self.assertEqual(config.zookeeper.zkConnect, "h:2181")

    def test_unreadableFile(self):
        path = self.mktemp()
        error = self.assertRaises(ConfigError, loadConfig, path)
        self.assertIn(path, str(error))
        self.assertIn("cannot read", str(error))

    def test_standalone(self):
        config = standaloneConfig()
        self.assertEqual(config.serverPort, 8123)
        self.assertEqual(config.dataPath, "data")
        self.assertTrue(config.isLegalTopic("anything"))
        self.assertEqual(config.numPartitionsOf("anything"), 1)
        self.assertFalse(config.zookeeper.zkEnable)

    def test_standaloneFlushesAsShipped(self):
        """
        Without a file the broker flushes and answers as MetaQ's shipped
        C{server.ini} says: group commit for every topic, realtime stats,
        and C{updateConsumerOffsets}.
        """
        config = standaloneConfig()
        self.assertTrue(config.topicConfig("anything").groupCommit)
        self.assertTrue(config.topicConfig("anything").stat)
        self.assertTrue(config.updateConsumerOffsets)

    def test_reloadTopics(self):
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(b"[system]\nnumPartitions=1\n[topic=a]\n")
        config = loadConfig(path)
        with open(path, "wb") as f:
            f.write(b"[system]\nnumPartitions=9\n[topic=a]\n[topic=b]\nnumPartitions=4\n")
        self.assertEqual(reloadTopics(config), ["b"])
        # [system] changes need a restart; topics inherit the old values.
        self.assertEqual(config.numPartitions, 1)
        self.assertEqual(config.numPartitionsOf("b"), 4)
        self.assertEqual(config.numPartitionsOf("a"), 1)

    def test_reloadBadFileKeepsTopics(self):
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(b"[topic=a]\n")
        config = loadConfig(path)
        with open(path, "wb") as f:
            f.write(b"[topic=a]\nbogus=1\n")
        self.assertRaises(ConfigError, reloadTopics, config)
        self.assertEqual(list(config.topics), ["a"])


class ExpressionTests(unittest.TestCase):
    def test_javaArithmetic(self):
        self.assertEqual(evaluateInteger("1024*1024"), 1048576)
        self.assertEqual(evaluateInteger("(1+2)*3 - 4/2"), 7)
        self.assertEqual(evaluateInteger("-7/2"), -3)
        self.assertEqual(evaluateInteger("-7%2"), -1)
        self.assertEqual(evaluateInteger("--3"), 3)

    def test_rejected(self):
        for text in ["", "1+", "(1", "1)", "2**3", "__import__('os')", "1/0", "1.5"]:
            self.assertRaises(ValueError, evaluateInteger, text)

    @settings(max_examples=100)
    @given(st.recursive(
        st.integers(min_value=0, max_value=1000).map(str),
        lambda inner: st.tuples(inner, st.sampled_from("+-*"), inner).map(
            lambda t: f"({t[0]}{t[1]}{t[2]})"),
        max_leaves=8))
    def test_agreesWithPython(self, expression):
        # Only + - *: Python's integers give the Java result where it fits.
        expected = eval(expression)
        if -(2**63) <= expected < 2**63:
            self.assertEqual(evaluateInteger(expression, 64), expected)
        else:
            self.assertRaises(ValueError, evaluateInteger, expression, 64)

    @settings(max_examples=100)
    @given(st.text(max_size=20))
    def test_neverCrashes(self, text):
        try:
            evaluateInteger(text)
        except ValueError:
            pass


class LevenshteinTests(unittest.TestCase):
    def test_distance(self):
        self.assertEqual(levenshtein("kitten", "sitting"), 3)
        self.assertEqual(levenshtein("", "abc"), 3)

    def test_closest(self):
        self.assertEqual(closestKey("serverport", SYSTEM_KEYS), "serverPort")

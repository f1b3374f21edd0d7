"""
Tests for L{metamorphosis.client.selectors}.
"""

import random
import zlib

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from metamorphosis.client.errors import MetaClientError, UnavailablePartitionError
from metamorphosis.client.interfaces import IPartitionSelector
from metamorphosis.client.message import Message
from metamorphosis.client.partition import Partition, parsePartitionsInfo
from metamorphosis.client.selectors import (
    HashPartitionSelector,
    OrderedPartitionSelector,
    RandomPartitionSelector,
    RoundRobinPartitionSelector,
)

PARTITIONS = [Partition(0, 0), Partition(0, 1), Partition(1, 0)]


class InterfaceTests(SynchronousTestCase):
    def test_provided(self):
        for selector in (
            RoundRobinPartitionSelector(),
            RandomPartitionSelector(),
            HashPartitionSelector(),
            OrderedPartitionSelector({}),
        ):
            verifyObject(IPartitionSelector, selector)


class RoundRobinTests(SynchronousTestCase):
    def test_javaOrder(self):
        """
        The counter is incremented before use: the first message goes to
        index 1, then 2, 0, 1 ...
        """
        selector = RoundRobinPartitionSelector()
        chosen = [selector.getPartition("t", PARTITIONS, Message("t", b"")) for _ in range(5)]
        self.assertEqual(chosen, [PARTITIONS[i] for i in (1, 2, 0, 1, 2)])

    def test_singlePartition(self):
        selector = RoundRobinPartitionSelector()
        self.assertEqual(selector.getPartition("t", [Partition(3, 0)], None), Partition(3, 0))

    def test_wrapsNonNegative(self):
        """
        Past 2^31 - 1 the counter is masked back to 0, as Java's
        PositiveAtomicCounter does.
        """
        selector = RoundRobinPartitionSelector()
        selector._counter = 0x7FFFFFFF - 1
        self.assertEqual(selector.getPartition("t", PARTITIONS, None), PARTITIONS[0x7FFFFFFF % 3])
        self.assertEqual(selector.getPartition("t", PARTITIONS, None), PARTITIONS[0])

    def test_noPartitions(self):
        selector = RoundRobinPartitionSelector()
        for partitions in (None, []):
            error = self.assertRaises(MetaClientError, selector.getPartition, "t", partitions, None)
            self.assertEqual(
                str(error),
                "There is no aviable partition for topic t,maybe you don't publish it at first?",
            )


class RandomTests(SynchronousTestCase):
    def test_coversAll(self):
        selector = RandomPartitionSelector(random.Random(4))
        chosen = {selector.getPartition("t", PARTITIONS, None) for _ in range(100)}
        self.assertEqual(chosen, set(PARTITIONS))

    def test_noPartitions(self):
        self.assertRaises(MetaClientError, RandomPartitionSelector().getPartition, "t", [], None)


class HashTests(SynchronousTestCase):
    def test_crc32OfKey(self):
        """
        The index is CRC32 of the key modulo the number of partitions, so it
        is the same in every process.
        """
        selector = HashPartitionSelector()
        for key in ("order-1", "order-2", "訂單-3"):
            expected = PARTITIONS[zlib.crc32(key.encode("utf-8")) % 3]
            self.assertEqual(selector.getPartition("t", PARTITIONS, Message("t", b"", key)), expected)

    def test_customKey(self):
        selector = HashPartitionSelector(key=lambda message: message.data[:2])
        a = selector.getPartition("t", PARTITIONS, Message("t", b"k1-first"))
        b = selector.getPartition("t", PARTITIONS, Message("t", b"k1-second"))
        self.assertEqual(a, b)

    def test_noKeyRoundRobin(self):
        selector = HashPartitionSelector()
        chosen = [selector.getPartition("t", PARTITIONS, Message("t", b"")) for _ in range(3)]
        self.assertEqual(chosen, [PARTITIONS[1], PARTITIONS[2], PARTITIONS[0]])

    @settings(max_examples=50)
    @given(st.text(), st.integers(1, 20))
    def test_stable(self, key, n):
        partitions = [Partition(0, i) for i in range(n)]
        selector = HashPartitionSelector()
        message = Message("t", b"", key)
        first = selector.getPartition("t", partitions, message)
        self.assertIn(first, partitions)
        self.assertEqual(HashPartitionSelector().getPartition("t", partitions, message), first)


class PartitionsInfoTests(SynchronousTestCase):
    def test_parse(self):
        self.assertEqual(
            parsePartitionsInfo("t", "1:2;0:1"),
            [Partition(0, 0), Partition(1, 0), Partition(1, 1)],
        )

    def test_bad(self):
        self.assertRaises(ValueError, parsePartitionsInfo, "t", "0-4")

    def test_randomPartitionString(self):
        self.assertEqual(Partition.fromString("-1--1"), Partition(-1, -1))
        self.assertEqual(str(Partition(-1, -1)), "-1--1")


class OrderedTests(SynchronousTestCase):
    configured = parsePartitionsInfo("t", "0:2;1:2")

    def selector(self):
        return OrderedPartitionSelector({"t": self.configured})

    def keyFor(self, partition):
        for n in range(1000):
            key = "key-%d" % n
            if self.configured[zlib.crc32(key.encode()) % 4] == partition:
                return key
        raise AssertionError("no key")

    def test_availableChosen(self):
        key = self.keyFor(Partition(0, 1))
        self.assertEqual(
            self.selector().getPartition("t", self.configured, Message("t", b"", key)), Partition(0, 1)
        )

    def test_sameKeyWhileUnavailable(self):
        """
        A key maps to its configured partition even when that partition is
        unavailable: the error names it, so the message can be kept for it.
        """
        key = self.keyFor(Partition(1, 0))
        available = self.configured[:2]
        error = self.assertRaises(
            UnavailablePartitionError,
            self.selector().getPartition,
            "t",
            available,
            Message("t", b"", key),
        )
        self.assertEqual(error.partition, Partition(1, 0))
        self.assertEqual(str(error), "selected partition[1-0]for topic[t]can not write now")

    def test_nothingAvailable(self):
        error = self.assertRaises(
            UnavailablePartitionError, self.selector().getPartition, "t", [], Message("t", b"", "k")
        )
        self.assertIn(error.partition, self.configured)

    def test_notConfigured(self):
        self.assertRaises(
            MetaClientError, self.selector().getPartition, "other", self.configured, Message("other", b"", "k")
        )

    def test_noKey(self):
        self.assertRaises(
            MetaClientError, self.selector().getPartition, "t", self.configured, Message("t", b"")
        )

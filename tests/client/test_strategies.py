"""
The rebalance strategies against tables computed by hand (DEFAULT) and by
running Java's C{ConsisHashStrategy} (CONSIST) on the same members.
"""

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import TestCase
from zope.interface.verify import verifyObject

from metamorphosis.client.interfaces import ILoadBalanceStrategy
from metamorphosis.client.strategies import (
    ConsistentHashStrategy,
    DefaultStrategy,
    javaSorted,
    ketamaHash,
    strategyNamed,
)


def assignment(strategy, consumers, partitions):
    consumers, partitions = javaSorted(consumers), javaSorted(partitions)
    return {c: sorted(strategy.getPartitions("t", c, consumers, partitions))
            for c in consumers}


class JavaSortTests(TestCase):
    def test_partitionsLexicographic(self):
        """
        Partition strings sort as strings, so C{0-10} precedes C{0-2}.
        """
        self.assertEqual(javaSorted(["0-2", "1-0", "0-10", "0-1", "10-0", "2-0"]),
                         ["0-1", "0-10", "0-2", "1-0", "10-0", "2-0"])

    def test_utf16Order(self):
        """
        A character outside the BMP (a surrogate pair in Java) sorts before
        U+FFFD as Java's UTF-16 comparison does, not after as code points do.
        """
        self.assertEqual(javaSorted(["\ufffd", "\U0001f600"]), ["\U0001f600", "\ufffd"])


class DefaultStrategyTests(TestCase):
    def test_interface(self):
        self.assertTrue(verifyObject(ILoadBalanceStrategy, DefaultStrategy()))

    def test_specExample(self):
        """
        Java's worked example of the default strategy.
        """
        self.assertEqual(
            assignment(DefaultStrategy(), ["g_b", "g_a"], ["1-1", "0-0", "0-2", "1-0", "0-1"]),
            {"g_a": ["0-0", "0-1", "0-2"], "g_b": ["1-0", "1-1"]})

    def test_threeConsumersTwelvePartitions(self):
        """
        11 partitions over three consumers: 4, 4, 3, in lexicographic runs.
        """
        partitions = ["0-%d" % i for i in range(11)]
        self.assertEqual(
            assignment(DefaultStrategy(), ["g_c", "g_a", "g_b"], partitions),
            {"g_a": ["0-0", "0-1", "0-10", "0-2"],
             "g_b": ["0-3", "0-4", "0-5", "0-6"],
             "g_c": ["0-7", "0-8", "0-9"]})

    def test_moreConsumersThanPartitions(self):
        self.assertEqual(
            assignment(DefaultStrategy(), ["g_a", "g_b", "g_c"], ["0-0", "0-1"]),
            {"g_a": ["0-0"], "g_b": ["0-1"], "g_c": []})

    def test_notAMember(self):
        self.assertEqual(DefaultStrategy().getPartitions("t", "g_x", ["g_a"], ["0-0"]), [])


class ConsistentHashStrategyTests(TestCase):
    def test_interface(self):
        self.assertTrue(verifyObject(ILoadBalanceStrategy, ConsistentHashStrategy()))

    def test_ketamaHash(self):
        """
        Values printed by Java's C{HashAlgorithm.KETAMA_HASH.hash}.
        """
        self.assertEqual([ketamaHash(p) for p in ["0-0", "0-1", "0-10", "2-0"]],
                         [53638855, 556329922, 1798013186, 3148546947])

    def test_threeConsumers(self):
        """
        The assignment Java's C{ConsisHashStrategy} computed for these members.
        """
        partitions = "0-0,0-1,0-2,0-3,1-0,1-1,1-2,1-3,0-10,2-0".split(",")
        self.assertEqual(
            assignment(ConsistentHashStrategy(), ["g_a", "g_b", "g_c"], partitions),
            {"g_a": ["0-1", "0-10", "0-2", "0-3", "1-0", "1-1", "1-2"],
             "g_b": ["0-0", "2-0"],
             "g_c": ["1-3"]})

    def test_javaConsumerIds(self):
        """
        Consumer ids in the Java format, two brokers of six partitions.
        """
        java = "grp-b_127.0.0.1-10108-9b0f8f2b-3557-4c80-a3e1-63ba812139c4"
        other = "grp-b_10.0.0.9-4242-3f2c0c55-1b7e-4c1a-9d36-0a8e5f1b2c3d"
        partitions = ["%d-%d" % (b, p) for b in range(2) for p in range(6)]
        self.assertEqual(
            assignment(ConsistentHashStrategy(), [java, other], partitions),
            {other: ["0-3", "0-4", "0-5", "1-0", "1-1", "1-2"],
             java: ["0-0", "0-1", "0-2", "1-3", "1-4", "1-5"]})

    def test_noConsumers(self):
        self.assertEqual(ConsistentHashStrategy().getPartitions("t", "g_a", [], ["0-0"]), [])


class PartitionPropertyTests(TestCase):
    """
    Whatever the members, each strategy gives every partition to exactly one
    consumer: no overlap, no gap.
    """

    @settings(max_examples=50, deadline=None)
    @given(consumers=st.sets(st.text(min_size=1, max_size=12), min_size=1, max_size=6),
           partitions=st.sets(st.tuples(st.integers(0, 12), st.integers(0, 30)), max_size=40))
    def test_exactCover(self, consumers, partitions):
        partitions = ["%d-%d" % p for p in partitions]
        for strategy in (DefaultStrategy(), ConsistentHashStrategy()):
            shares = assignment(strategy, consumers, partitions)
            owned = [p for share in shares.values() for p in share]
            self.assertEqual(sorted(owned), sorted(partitions))


class StrategyNamedTests(TestCase):
    def test_names(self):
        self.assertIsInstance(strategyNamed("DEFAULT"), DefaultStrategy)
        self.assertIsInstance(strategyNamed("consist"), ConsistentHashStrategy)

    def test_unknown(self):
        self.assertRaises(ValueError, strategyNamed, "RANDOM")

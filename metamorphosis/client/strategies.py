"""
How the consumers of one group divide a topic's partitions among themselves.

Every member of a group computes the whole assignment on its own, from the
same ZooKeeper snapshot, and takes only its share; the members never talk to
each other.  A Python consumer therefore shares a group with Java consumers
only if it computes exactly what Java's C{DefaultLoadBalanceStrategy} and
C{ConsisHashStrategy} compute, over lists sorted the way Java sorts them
(docs/zookeeper.md).
"""

import bisect
import hashlib

from zope.interface import implementer

from metamorphosis.client.interfaces import ILoadBalanceStrategy


def javaStringKey(text):
    """
    A sort key ordering strings as Java's C{String.compareTo} does: by UTF-16
    code unit, which differs from Python's code point order for characters
    outside the basic multilingual plane.
    """
    return text.encode("utf-16-be", "surrogatepass")


def javaSorted(strings):
    """
    C{strings} sorted in Java's C{String} order, so that C{"0-10"} comes
    before C{"0-2"} as it does for every Java consumer.
    """
    return sorted(strings, key=javaStringKey)


@implementer(ILoadBalanceStrategy)
class DefaultStrategy:
    """
    Contiguous ranges (C{DEFAULT}): the sorted partitions are cut into as many
    runs as there are consumers, the first C{len(partitions) % len(consumers)}
    runs one longer than the rest.
    """

    name = "DEFAULT"

    def getPartitions(self, topic, consumerId, consumers, partitions):
        try:
            position = consumers.index(consumerId)
        except ValueError:
            return []
        perConsumer, withExtra = divmod(len(partitions), len(consumers))
        start = perConsumer * position + min(position, withExtra)
        count = perConsumer + (1 if position < withExtra else 0)
        return list(partitions[start:start + count])


def ketamaHash(key):
    """
    Ketama's hash of a string: the first four bytes of its MD5 as a
    little-endian unsigned int (Java's C{HashAlgorithm.KETAMA_HASH}).
    """
    return int.from_bytes(_md5(key)[:4], "little")


def _md5(text):
    # Java's String.getBytes() uses the platform charset; consumer ids and
    # partition strings are ASCII in practice, where every charset agrees.
    return hashlib.md5(text.encode("utf-8")).digest()


@implementer(ILoadBalanceStrategy)
class ConsistentHashStrategy:
    """
    Consistent hashing (C{CONSIST}): each consumer takes 160 points of a
    Ketama ring and a partition belongs to the first point at or after its
    hash, so a member joining or leaving moves few partitions.
    """

    name = "CONSIST"
    pointsPerConsumer = 160

    def getPartitions(self, topic, consumerId, consumers, partitions):
        keys, owners = self._ring(consumers)
        if not keys:
            return []
        mine = []
        for partition in partitions:
            index = bisect.bisect_left(keys, ketamaHash(partition))
            if owners[index % len(keys)] == consumerId:
                mine.append(partition)
        return mine

    def _ring(self, consumers):
        ring = {}
        for consumer in consumers:
            for i in range(self.pointsPerConsumer // 4):
                digest = _md5("%s-%d" % (consumer, i))
                for h in range(4):
                    # Later consumers overwrite earlier ones on a collision,
                    # as Java's TreeMap.put does.
                    ring[int.from_bytes(digest[4 * h:4 * h + 4], "little")] = consumer
        keys = sorted(ring)
        return keys, [ring[key] for key in keys]


STRATEGIES = {
    DefaultStrategy.name: DefaultStrategy,
    ConsistentHashStrategy.name: ConsistentHashStrategy,
}


def strategyNamed(name):
    """
    The strategy for a C{loadBalanceStrategyType} value (C{DEFAULT} or
    C{CONSIST}).

    @raise ValueError: for any other name.
    """
    try:
        return STRATEGIES[name.upper()]()
    except KeyError:
        raise ValueError("Unknown load balance strategy %r (use %s)"
                         % (name, " or ".join(STRATEGIES)))

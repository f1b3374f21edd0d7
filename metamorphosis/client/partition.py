"""
A partition of a topic as clients name it: the broker id and the partition
number on that broker, written C{"<brokerId>-<partition>"} in ZooKeeper and
in offset storages (Java's C{commons/cluster/Partition}).
"""

from dataclasses import dataclass


@dataclass(frozen=True, order=True)
class Partition:
    """
    Ordered numerically by (brokerId, partition) like Java's
    C{Partition.compareTo}; rebalancing sorts the I{strings} instead.
    """

    brokerId: int
    partition: int

    @classmethod
    def fromString(cls, text):
        """
        Parse C{"<brokerId>-<partition>"}.

        @raise ValueError: for anything else.
        """
        brokerId, sep, partition = text.partition("-")
        if not brokerId:
            # A negative broker id, as in Java's "-1--1" random partition.
            brokerId, sep, partition = partition.partition("-")
            brokerId = "-" + brokerId
        if not sep:
            raise ValueError("Illegal partition string %r" % (text,))
        return cls(int(brokerId), int(partition))

    def __str__(self):
        return "%d-%d" % (self.brokerId, self.partition)


RANDOM_PARTITION = Partition(-1, -1)
"""
Java's C{Partition.RandomPartiton}: put with partition C{-1} and the broker
picks one (direct C{meta://} mode without a partition map).
"""


def parsePartitionsInfo(topic, value):
    """
    Expand an ordered producer's configured partitions, the value of
    C{topic.num.<topic>}: C{"<brokerId>:<count>;<brokerId>:<count>..."}
    (C{DiamondUtils.parsePartitions}), into a sorted list of L{Partition}s.

    @raise ValueError: an entry is not C{<int>:<int>}.
    """
    partitions = []
    for entry in value.split(";"):
        entry = entry.strip()
        if not entry:
            continue
        brokerId, sep, count = entry.partition(":")
        if not sep:
            raise ValueError(
                "Invalid partitions for topic %s: %r (expected brokerId:count)"
                % (topic, entry)
            )
        partitions.extend(Partition(int(brokerId), n) for n in range(int(count)))
    return sorted(partitions)

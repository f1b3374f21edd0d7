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
        if not sep:
            raise ValueError("Illegal partition string %r" % (text,))
        return cls(int(brokerId), int(partition))

    def __str__(self):
        return "%d-%d" % (self.brokerId, self.partition)

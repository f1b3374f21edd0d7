"""
Partition selectors: which partition a message goes to
(C{client/producer/*PartitionSelector.java},
C{client/extension/producer/OrderedMessagePartitionSelector.java}).
"""

import random
import zlib

from zope.interface import implementer

from metamorphosis.client.errors import MetaClientError, UnavailablePartitionError
from metamorphosis.client.interfaces import IPartitionSelector


def _noPartition(topic):
    return MetaClientError(
        "There is no aviable partition for topic %s,maybe you don't publish it at first?" % (topic,)
    )


@implementer(IPartitionSelector)
class RoundRobinPartitionSelector:
    """
    The default: cycle through the partitions in their sorted order.  Like
    Java's, the counter is incremented before use, so the first message goes
    to the partition at index 1 (index 0 when there is only one).

    The producer hands it only the partitions of brokers it is connected
    to, when there are any (L{skipsUnreachableBrokers}).
    """

    #: Any partition will do, so the producer leaves out those of brokers
    #: it has no connection to (a crashed broker stays in ZooKeeper until
    #: its session expires).
    skipsUnreachableBrokers = True

    def __init__(self):
        self._counter = 0

    def getPartition(self, topic, partitions, message):
        if not partitions:
            raise _noPartition(topic)
        self._counter = (self._counter + 1) & 0x7FFFFFFF
        return partitions[self._counter % len(partitions)]


#: The generator of the selectors not given their own.
_SHARED_RANDOM = random.Random()


@implementer(IPartitionSelector)
class RandomPartitionSelector:
    """
    A uniformly random partition per message (among those of reachable
    brokers, as for L{RoundRobinPartitionSelector}).
    """

    skipsUnreachableBrokers = True

    def __init__(self, random=None):
        self._random = random if random is not None else _SHARED_RANDOM

    def getPartition(self, topic, partitions, message):
        if not partitions:
            raise _noPartition(topic)
        return partitions[self._random.randrange(len(partitions))]


def attributeKey(message):
    """
    The default key of the key-based selectors: the message's attribute.
    """
    return message.attribute


def _stableHash(key):
    # CRC32, not hash(): the same key must map to the same partition in
    # every process (Python salts str hashes per process).
    if isinstance(key, str):
        key = key.encode("utf-8")
    elif not isinstance(key, bytes):
        key = str(key).encode("utf-8")
    return zlib.crc32(key)


@implementer(IPartitionSelector)
class HashPartitionSelector:
    """
    Messages with equal keys go to the same partition (as long as the
    partition list does not change): index = CRC32(key) modulo the number of
    partitions.  Messages without a key are spread round-robin.

    @param key: a callable giving a message's key (bytes, text, or anything
        whose C{str} is stable); the attribute by default.
    """

    def __init__(self, key=attributeKey):
        self._key = key
        self._fallback = RoundRobinPartitionSelector()

    def getPartition(self, topic, partitions, message):
        if not partitions:
            raise _noPartition(topic)
        key = self._key(message)
        if key is None:
            return self._fallback.getPartition(topic, partitions, message)
        return partitions[_stableHash(key) % len(partitions)]


@implementer(IPartitionSelector)
class OrderedPartitionSelector:
    """
    The selector of an ordered producer: it chooses among the
    I{configured} partitions of a topic (C{topic.num.<topic>}, see
    L{metamorphosis.client.partition.parsePartitionsInfo}), by a hash of
    the message key, so a key always maps to the same partition even while
    that partition is unavailable.  When the chosen partition is not among
    the available ones it raises L{UnavailablePartitionError} carrying it,
    and the ordered producer keeps the message locally
    (C{OrderedMessagePartitionSelector.getPartition}).

    @param partitionsInfo: a mapping of topic to its configured partitions
        (a sorted list of L{Partition}).
    @param key: a callable giving a message's key; the attribute by default.
    """

    def __init__(self, partitionsInfo, key=attributeKey):
        self.partitionsInfo = partitionsInfo
        self._key = key

    def configuredPartitions(self, topic):
        """
        @return: the configured partitions of C{topic} (possibly empty).
        """
        return self.partitionsInfo.get(topic, [])

    def choosePartition(self, topic, partitions, message):
        """
        Choose among the configured C{partitions}; override to change the
        mapping.
        """
        key = self._key(message)
        if key is None:
            raise MetaClientError(
                "An ordered message needs a key (topic %s): messages without one have no order"
                % (topic,)
            )
        return partitions[_stableHash(key) % len(partitions)]

    def getPartition(self, topic, partitions, message):
        configured = self.configuredPartitions(topic)
        if not configured:
            raise MetaClientError(
                "There is no config partitions for topic %s,maybe you don't config it at first?"
                % (topic,)
            )
        selected = self.choosePartition(topic, configured, message)
        if selected is None:
            raise MetaClientError("selected null partition")
        available = partitions or []
        if selected not in configured and selected not in available:
            raise MetaClientError(
                "invalid selected partition:%s,config and availabe paritions not contains it"
                % (selected,)
            )
        if selected in configured and selected in available:
            return selected
        raise UnavailablePartitionError(
            "selected partition[%s]for topic[%s]can not write now" % (selected, topic), selected
        )

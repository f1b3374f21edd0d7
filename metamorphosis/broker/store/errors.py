"""
Errors of the message store, each named for the broker reply it leads to.
"""


class IllegalTopic(Exception):
    """
    A put for a topic no C{[topic=…]} section accepts (the broker answers
    403 with this message).
    """

    def __init__(self, topic):
        Exception.__init__(self, "The server do not accept topic %s" % (topic,))
        self.topic = topic


class TooManyTopics(Exception):
    """
    A put would create a topic past C{maxAutoCreatedTopics}.
    """

    def __init__(self, topic, limit):
        Exception.__init__(
            self,
            f"topic {topic} not created: the broker already has {limit} auto-created "
            f"topics (maxAutoCreatedTopics); a [topic={topic}] section creates it",
        )
        self.topic = topic


class OutOfDescriptors(Exception):
    """
    A new partition would leave fewer free file descriptors than the broker
    keeps for connections.
    """

    def __init__(self, topic, free, reserved):
        Exception.__init__(
            self,
            f"topic {topic} not created: only {free} file descriptors are free and the "
            f"broker keeps {reserved} for connections (reservedFileDescriptors; raise "
            "the open files limit, ulimit -n)",
        )
        self.topic = topic


class WrongPartition(Exception):
    """
    A partition outside C{[0, numPartitions)}.
    """

    def __init__(self, partition):
        Exception.__init__(self, "wrong partition %s" % (partition,))
        self.partition = partition


class OffsetBeforeStart(Exception):
    """
    A read below the first segment, e.g. after retention deleted it; the
    broker moves the consumer with 301 to L{IMessageStore.nearestOffset}.
    """

    def __init__(self, offset, minOffset):
        Exception.__init__(
            self, "offset %d is before the start %d of the log" % (offset, minOffset)
        )
        self.offset = offset
        self.minOffset = minOffset


class OffsetMismatch(Exception):
    """
    A replicated buffer would not land at the offset its sender expects.
    """

    def __init__(self, expected, actual):
        Exception.__init__(
            self, "expected to append at offset %d but the log ends at %d" % (expected, actual)
        )
        self.expected = expected
        self.actual = actual


class CorruptRecord(Exception):
    """
    A stored record failed its checksum when read back.
    """

    def __init__(self, topic, partition, offset, reason):
        Exception.__init__(
            self,
            "corrupt record in %s-%s at offset %d: %s" % (topic, partition, offset, reason),
        )
        self.offset = offset


class StoreClosed(Exception):
    """
    An append to a store that is closing or closed.
    """


class PartitionReadOnly(Exception):
    """
    A write to a partition whose files are not whole (a segment that cannot
    be opened, an active segment deleted under the broker): it takes no
    writes so that no acknowledged offset is handed out twice.
    """

    def __init__(self, topic, partition, reason):
        Exception.__init__(
            self,
            "partition %s-%s is read only, its files are damaged: %s" % (topic, partition, reason),
        )
        self.reason = reason


class SegmentLost(Exception):
    """
    The active segment file was deleted or replaced under the broker.
    """

    def __init__(self, path, how):
        Exception.__init__(self, "segment file %s was %s while the broker used it" % (path, how))
        self.path = path


class DamagedRecords(Exception):
    """
    A read at a damaged range of the log; consumers move on to
    C{nextOffset}, the first byte after it.
    """

    def __init__(self, offset, nextOffset, reason):
        Exception.__init__(
            self,
            "offset %d is in damaged bytes (%s); the next valid record is at %d"
            % (offset, reason, nextOffset),
        )
        self.offset = offset
        self.nextOffset = nextOffset
        self.reason = reason

"""
Reading a whole topic from the start, outside any consumer group's
offsets (Java's C{MetaTopicBrowser}, docs/client-consumer.md).

A L{TopicBrowser} walks the topic's master partitions one after the other,
each from offset 0, with one-shot C{get}s under the group
C{Just_for_Browser}; it stores no offset and joins no group.
"""

import warnings

from twisted.logger import Logger

from metamorphosis.client.consumer import getOnce
from metamorphosis.protocol.topics import checkTopic

BROWSER_GROUP = "Just_for_Browser"


class TopicBrowser:
    """
    The messages of a topic, partition by partition.

    Iterate it in a coroutine (C{async for message in browser}), or call
    L{nextBatch} until it gives an empty list.  As in Java, a partition
    ends at the first C{get} that brings no complete message: a message
    larger than C{maxSize} ends its partition.

    @param partitions: C{(Partition, brokerUrl)} pairs, in browsing order.
    """

    log = Logger()

    def __init__(self, connections, topic, partitions, maxSize=1024 * 1024, timeout=5.0):
        if not topic or not topic.strip():
            raise ValueError("Blank topic")
        checkTopic(topic)
        if maxSize <= 0:
            raise ValueError("Invalid max size")
        if timeout <= 0:
            raise ValueError("Invalid timeout value")
        self.connections = connections
        self.topic = topic
        self.maxSize = maxSize
        self.timeout = timeout
        self._remaining = list(partitions)
        self._current = None
        self._offset = 0

    async def nextBatch(self):
        """
        The next messages: those of one C{get}.

        @return: a Deferred-compatible coroutine giving a list of
            L{Message}s, empty once every partition is read.
        """
        while True:
            if self._current is None:
                if not self._remaining:
                    return []
                self._current = self._remaining.pop(0)
                self._offset = 0
            partition, url = self._current
            messages, consumed = await getOnce(
                self.connections.connection(url), self.topic, BROWSER_GROUP, partition,
                self._offset, self.maxSize, self.timeout)
            if messages:
                self._offset += consumed
                return messages
            self._current = None

    async def __aiter__(self):
        while True:
            batch = await self.nextBatch()
            if not batch:
                return
            for message in batch:
                yield message


def createTopicBrowser(factory, topic, maxSize=1024 * 1024, timeout=5.0):
    """
    Deprecated: use C{factory.createTopicBrowser(topic)}.
    """
    warnings.warn("createTopicBrowser(factory, topic) is deprecated: use factory.createTopicBrowser(topic)",
                  DeprecationWarning, stacklevel=2)
    return factory.createTopicBrowser(topic, maxSize, timeout)

"""
The message a producer sends and a consumer receives (Java's
C{com.taobao.metamorphosis.Message}).
"""

from metamorphosis.protocol import records
from metamorphosis.protocol.topics import checkTopic


class Message:
    """
    A message: a topic, a payload and an optional attribute.

    The broker assigns the id; a successful send sets C{id} and
    C{partition} (the L{metamorphosis.client.partition.Partition} the
    message went to), as the Java producer does.

    @ivar topic: the topic name: ASCII letters, digits, C{.}, C{_} and
        C{-}, 1 to 249 characters, not C{.} or C{..}.
    @ivar data: the payload (bytes).
    @ivar attribute: an optional text attribute stored with the payload
        (C{None} is no attribute; C{""} is an empty one, and differs).
    @ivar id: the broker-assigned 64-bit id, or L{None} before sending.
    @ivar partition: the partition it was sent to (or read from), or
        L{None}.
    """

    def __init__(self, topic, data, attribute=None, id=None, partition=None):
        """
        @raise metamorphosis.protocol.topics.IllegalTopicName: C{topic} is
            not a legal topic name, which no broker would accept.
        @raise TypeError: C{data} is not bytes (a C{str} must be encoded
            first: MetaQ carries bytes, and the reader decides what they are).
        """
        if data is not None and not isinstance(data, (bytes, bytearray)):
            raise TypeError(
                "Message data must be bytes, not %s; encode text first, e.g. %r.encode('utf-8')"
                % (type(data).__name__, data if isinstance(data, str) and len(data) < 40 else "text"))
        self.topic = checkTopic(topic)
        self.data = data
        self.attribute = attribute
        self.id = id
        self.partition = partition

    def __repr__(self):
        return "<Message topic=%r id=%r partition=%s attribute=%r data=%d bytes>" % (
            self.topic,
            self.id,
            self.partition,
            self.attribute,
            len(self.data) if self.data is not None else 0,
        )

    def __eq__(self, other):
        if not isinstance(other, Message):
            return NotImplemented
        return (self.topic, self.data, self.attribute, self.id, self.partition) == (
            other.topic,
            other.data,
            other.attribute,
            other.id,
            other.partition,
        )

    __hash__ = None

    def encode(self):
        """
        The put body and flag for this message (attribute prefix + data,
        flag bit 0 when there is an attribute; docs/storage.md).

        @return: C{(body, flag)}
        """
        return records.encodePayload(self.data, self.attribute)

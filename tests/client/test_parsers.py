"""
Property tests of the client's small parsers: partition strings, the
ordered producer's partition configuration, broker URLs, put replies.
"""

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from metamorphosis.client.connection import parseBrokerUrl
from metamorphosis.client.message import Message
from metamorphosis.client.partition import Partition, parsePartitionsInfo
from metamorphosis.client.producer import MessageProducer, SendResult
from metamorphosis.protocol.commands import ResultCommand

ints = st.integers(-(2**31), 2**31 - 1)


class PartitionStringTests(SynchronousTestCase):
    @settings(max_examples=100)
    @given(ints, ints)
    def test_roundTrip(self, brokerId, partition):
        """
        Every partition, negative numbers included, survives str() and
        fromString().
        """
        self.assertEqual(Partition.fromString(str(Partition(brokerId, partition))), Partition(brokerId, partition))

    @settings(max_examples=100)
    @given(st.text())
    def test_garbage(self, text):
        """
        Anything else is a ValueError, never another exception.
        """
        try:
            Partition.fromString(text)
        except ValueError:
            pass


class PartitionsInfoTests(SynchronousTestCase):
    @settings(max_examples=50)
    @given(st.dictionaries(st.integers(0, 1000), st.integers(0, 20), max_size=5))
    def test_expands(self, counts):
        text = ";".join("%d:%d" % item for item in counts.items())
        expected = sorted(Partition(b, p) for b, n in counts.items() for p in range(n))
        self.assertEqual(parsePartitionsInfo("t", text), expected)


class BrokerUrlTests(SynchronousTestCase):
    @settings(max_examples=50)
    @given(
        st.one_of(
            st.ip_addresses(v=4).map(str),
            st.ip_addresses(v=6).map(lambda a: "[%s]" % a),
            st.from_regex(r"\A[a-z][a-z0-9-]{0,20}(\.[a-z][a-z0-9-]{0,20}){0,3}\Z"),
        ),
        st.integers(1, 65535),
    )
    def test_roundTrip(self, host, port):
        parsedHost, parsedPort = parseBrokerUrl("meta://%s:%d" % (host, port))
        self.assertEqual(parsedHost, host.strip("[]").lower())
        self.assertEqual(parsedPort, port)


class PutReplyTests(SynchronousTestCase):
    def result(self, code, body):
        producer = MessageProducer(sessionFactory=None)
        message = Message("t", b"x")
        return message, producer._sendResult(ResultCommand(code, body, 0), message, Partition(3, 0))

    @settings(max_examples=100)
    @given(st.integers(-(2**63), 2**63 - 1), st.integers(0, 1000), st.integers(0, 2**62))
    def test_success(self, msgId, partition, offset):
        message, result = self.result(200, b"%d %d %d" % (msgId, partition, offset))
        self.assertEqual(result, SendResult(True, Partition(3, partition), offset, None, msgId))
        self.assertEqual((message.id, message.partition), (msgId, Partition(3, partition)))

    @settings(max_examples=100)
    @given(st.sampled_from([200, 403, 500, 503]), st.binary(max_size=64))
    def test_anyBody(self, code, body):
        """
        Whatever a broker answers, the producer gives a SendResult; only a
        well-formed 200 is a success.
        """
        message, result = self.result(code, body)
        self.assertIsInstance(result, SendResult)
        if result.success:
            self.assertEqual(code, 200)
        elif code == 403:
            self.assertEqual(result.errorMessage, "403")

    def test_javaNumbers(self):
        """
        The reply is read as Java reads it: split on single spaces with
        trailing empty tokens dropped, numbers without underscores and within
        their Java types.
        """
        message, result = self.result(200, b"1 0 0 ")
        self.assertTrue(result.success)
        for body in (b"1_0 0 0", b"1  0 0", b"1 0 9223372036854775808", b"1 2147483648 0", b"1 0"):
            message, result = self.result(200, body)
            self.assertFalse(result.success, body)
            self.assertTrue(result.errorMessage.startswith("Invalid put reply"))

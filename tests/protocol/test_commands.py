"""
Tests for L{metamorphosis.protocol.commands}.
"""

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from metamorphosis.protocol.commands import (
    DEFAULT_OPAQUE,
    TRANSACTION_TYPES,
    CommandParser,
    GetCommand,
    OffsetCommand,
    ProtocolError,
    PutBatch,
    PutCommand,
    QuitCommand,
    ResultCommand,
    StatsCommand,
    SyncBatch,
    SyncCommand,
    TransactionCommand,
    ValueCommand,
    VersionCommand,
    encodeSyncs,
    javaSplit,
    newPut,
    newResult,
    newSync,
    newTransaction,
    valueHeader,
)
from tests.protocol import strategies

# Bytes produced by the Java encoders, and what the
# Java decoder makes of them.
GOLDEN = [
    (
        b"put test 0 5 0 907060870 -2147483648\r\nhello",
        PutCommand("test", 0, b"hello", 0, -2147483648, checksum=907060870),
    ),
    (
        b"put test 0 5 0 907060870 TX:10.0.0.1-1357000000000-1:1 -2147483647\r\nhello",
        PutCommand(
            "test", 0, b"hello", 0, -2147483647, checksum=907060870,
            transactionKey="TX:10.0.0.1-1357000000000-1:1",
        ),
    ),
    (
        b"get test group1 0 0 1048576 -2147483646\r\n",
        GetCommand("test", "group1", 0, 0, 1048576, -2147483646),
    ),
    (
        b"offset test group1 0 0 -2147483645\r\n",
        OffsetCommand("test", "group1", 0, 0, -2147483645),
    ),
    (b"stats  -2147483644\r\n", StatsCommand("", -2147483644)),
    (b"stats topics -2147483644\r\n", StatsCommand("topics", -2147483644)),
    (b"version -2147483643\r\n", VersionCommand(-2147483643)),
    (b"quit\r\n", QuitCommand()),
    (
        b"sync test 0 5 0 -5468572396564774912 907060870 -2147483642\r\nhello",
        SyncCommand(
            "test", 0, b"hello", 0, -5468572396564774912, -2147483642,
            checksum=907060870,
        ),
    ),
    (
        b"transaction TX:sess:1 sess BEGIN 5\r\n",
        TransactionCommand("TX:sess:1", "sess", "BEGIN", 5),
    ),
    (
        b"transaction XID:1:0102ff:0a0b:XAMessageProducer-host1 sess BEGIN 30 "
        b"XAMessageProducer-host1 6\r\n",
        TransactionCommand(
            "XID:1:0102ff:0a0b:XAMessageProducer-host1", "sess", "BEGIN", 6,
            timeout=30, uniqueQualifier="XAMessageProducer-host1",
        ),
    ),
    (
        b"transaction null sess RECOVER XAMessageProducer-host1 7\r\n",
        TransactionCommand(
            "null", "sess", "RECOVER", 7, uniqueQualifier="XAMessageProducer-host1"
        ),
    ),
    (
        b"result 200 24 -2147483648\r\n-5468572396564774912 0 0",
        ResultCommand(200, b"-5468572396564774912 0 0", -2147483648),
    ),
    (b"result 200 0 7\r\n", ResultCommand(200, b"", 7)),
    (b"value 5 -2147483646\r\nhello", ValueCommand(b"hello", -2147483646)),
]

# Decoder results: lines the Java encoders never
# write but the decoder accepts.
DECODED = [
    (b"put test 0 5 0 0\r\nhello", PutCommand("test", 0, b"hello", 0, 0)),
    (b"put test 0 5 0 -1 0\r\nhello", PutCommand("test", 0, b"hello", 0, 0)),
    (
        b"put test 0 5 0 TX:s:1 0\r\nhello",
        PutCommand("test", 0, b"hello", 0, 0, transactionKey="TX:s:1"),
    ),
    (b"stats\r\n", StatsCommand(None, DEFAULT_OPAQUE)),
    (b"stats  9\r\n", StatsCommand("", 9)),
    (b"version\r\n", VersionCommand(DEFAULT_OPAQUE)),
    (
        b"transaction TX:s:1 s BEGIN 12345 9\r\n",
        TransactionCommand("TX:s:1", "s", "BEGIN", 9, timeout=12345),
    ),
    (
        b"transaction TX:s:1 s BEGIN -1 9\r\n",
        TransactionCommand("TX:s:1", "s", "BEGIN", 9, uniqueQualifier="-1"),
    ),
    (
        b"transaction TX:s:1 s BEGIN abc 9\r\n",
        TransactionCommand("TX:s:1", "s", "BEGIN", 9, uniqueQualifier="abc"),
    ),
    (
        b"sync test 0 5 0 77 9\r\nhello",
        SyncCommand("test", 0, b"hello", 0, 77, 9),
    ),
    # Lenient words, ignored extra tokens, Java number syntax.
    (b"quitting now\r\n", QuitCommand()),
    (b"q\r\n", QuitCommand()),
    (b"v 3\r\n", VersionCommand(3)),
    (b"versionx 3 extra\r\n", VersionCommand(3)),
    (b"values 3\r\n", VersionCommand(3)),  # only "value" itself is a value
    (b"version 12 \r\n", VersionCommand(12)),
    (b"stats topics 5 extra\r\n", StatsCommand("topics", 5)),
    (b"get t g 0 0 1 2 extra\r\n", GetCommand("t", "g", 0, 0, 1, 2)),
    (b"offset t g +1 -0 +7 x\r\n", OffsetCommand("t", "g", 1, 0, 7)),
    (b"get t g 007 9223372036854775807 1 -2147483648\r\n",
     GetCommand("t", "g", 7, 2**63 - 1, 1, -(2**31))),
    (b"get t  0 0 1 2\r\n", GetCommand("t", "", 0, 0, 1, 2)),
    (b"version \xd9\xa3\r\n", VersionCommand(3)),  # Arabic-Indic digit three
    (
        b"put t 0 2 0 +5 TX:s:1 1\r\nab",
        PutCommand("t", 0, b"ab", 0, 1, checksum=5, transactionKey="TX:s:1"),
    ),
    (
        b"put t 0 2 0 null 1\r\nab",
        PutCommand("t", 0, b"ab", 0, 1, transactionKey="null"),
    ),
    (
        b"transaction TX:s:01: s COMMIT_ONE_PHASE 1\r\n",
        TransactionCommand("TX:s:1", "s", "COMMIT_ONE_PHASE", 1),
    ),
    (
        b"transaction XID:1:AB:c:q s END -5 q 1\r\n",
        TransactionCommand("XID:1:ab::q", "s", "END", 1, timeout=-5, uniqueQualifier="q"),
    ),
    (b"result 500 3 1\r\n\xe4\xb8\xad", ResultCommand(500, "中".encode(), 1)),
]

# Lines the Java decoder rejects, with the opaque our error carries.
MALFORMED = [
    (b"hello world\r\n", 0),
    (b"pingpong\r\n", 0),
    (b"\r\n", 0),
    (b"   \r\n", 0),
    (b" stats\r\n", 0),
    (b"put meta-test\r\n", 0),
    (b"get meta-test g x 0 100 1\r\n", 1),
    (b"get meta-test g 0 0 100\r\n", 0),
    (b"get t g 0 0 1 2147483648\r\n", 0),
    (b"get t g 2147483648 0 1 5\r\n", 5),
    (b"get t g 0 9223372036854775808 1 5\r\n", 5),
    (b"get t g 0_0 0 1 5\r\n", 5),
    (b"get t g  0 0 1 5\r\n", 1),
    (b"get t g 0 0 1 +\r\n", 0),
    (b"offset t g 0 0\r\n", 0),
    (b"offset t g 0 x 3\r\n", 3),
    (b"transaction TX:s:1 s BOGUS 5\r\n", 5),
    (b"transaction TX:s:1 s begin 5\r\n", 5),
    (b"transaction TX:s:1 s BEGIN\r\n", 0),
    (b"transaction TX:s:1 s BEGIN 1 q x 5\r\n", 0),
    (b"transaction TX:s:1 s BEGIN  5\r\n", 5),
    (b"transaction TX:s: s BEGIN 5\r\n", 5),
    (b"transaction TX:s:2147483648 s BEGIN 5\r\n", 5),
    (b"transaction XID:1:00:00 s BEGIN 5\r\n", 5),
    (b"transaction XID:1:0g:00:q s BEGIN 5\r\n", 5),
    (b"transaction tx:s:1 s BEGIN 5\r\n", 5),
    (b"trans TX:s:1 s BEGIN 5\r\n", 0),
    (b"stats topics x\r\n", 0),
    (b"stat\r\n", 0),
    (b"synchronise t 0 0 0 1 2\r\n", 0),
    (b"version x\r\n", 0),
    (b"offsets t g 0 0 1\r\n", 0),
    (b"gets t g 0 0 1 2\r\n", 0),
    (b"put t 0 -1 0 1 2\r\n", 2),
    (b"put t 0 x 0 1 2\r\nab", 2),
    (b"put t 0 2 0\r\nab", 0),
    (b"put t 0 2 0 1 2 3 4 5\r\nab", 0),
    (b"put t 0 2 0  2\r\nab", 2),
    (b"put t 0 2 0 +5 2\r\nab", 2),
    (b"put t 0 2 0 5 TX:s:1 x\r\nab", 0),
    (b"put t 0 2 0 5 BAD 2\r\nab", 2),
    (b"sync t 0 2 0 1\r\nab", 0),
    (b"sync t 0 2 0 x 2 3\r\nab", 3),
    (b"value -1 2\r\n", 2),
    (b"value 2\r\nab", 0),
    (b"result 200 -1 2\r\n", 2),
    (b"result x 0 2\r\n", 2),
    (b"result 200 0\r\n", 0),
    (b"xyz\r\n", 0),
    (b"\xffstats\r\n", 0),
    (b"stats \xc3\r\n", 0),
    (b"1 2 3\r\n", 0),
]


class GoldenTests(SynchronousTestCase):
    """
    Bytes the Java encoders produce, and what they decode to.
    """

    def test_encode(self):
        for wire, command in GOLDEN:
            self.assertEqual(command.encode(), wire)

    def test_decode(self):
        for wire, command in GOLDEN:
            self.assertEqual(CommandParser().feed(wire), [command])

    def test_decodeJavaAccepts(self):
        for wire, command in DECODED:
            self.assertEqual(CommandParser().feed(wire), [command], wire)

    def test_decodeAllInOneStream(self):
        wire = b"".join(wire for wire, _ in GOLDEN + DECODED)
        self.assertEqual(
            CommandParser().feed(wire), [command for _, command in GOLDEN + DECODED]
        )

    def test_statsBlankItem(self):
        """
        A blank item is written as an empty token, whatever its spelling.
        """
        for item in (None, "", " ", "\t"):
            self.assertEqual(StatsCommand(item, 9).encode(), b"stats  9\r\n")

    def test_transactionOptionalFields(self):
        """
        The timeout is written only when positive, the qualifier only when
        not blank.
        """
        self.assertEqual(
            TransactionCommand("TX:s:1", "s", "BEGIN", 1, -3, " ").encode(),
            b"transaction TX:s:1 s BEGIN 1\r\n",
        )
        self.assertEqual(
            TransactionCommand("TX:s:1", "s", "BEGIN", 1, 0, "q").encode(),
            b"transaction TX:s:1 s BEGIN q 1\r\n",
        )

    def test_headers(self):
        self.assertEqual(valueHeader(1048576, 5), b"value 1048576 5\r\n")

    def test_resultMessage(self):
        self.assertEqual(ResultCommand(503, "中".encode(), 1).message, "中")

    def test_quitOpaque(self):
        self.assertEqual(QuitCommand().opaque, DEFAULT_OPAQUE)

    def test_transactionId(self):
        command = TransactionCommand("TX:s:1", "s", "BEGIN", 1)
        self.assertEqual(command.transactionId.sessionId, "s")


class SplitTests(SynchronousTestCase):
    """
    L{javaSplit} is C{Pattern.compile(" ").split}.
    """

    def test_examples(self):
        self.assertEqual(javaSplit("stats  9"), ["stats", "", "9"])
        self.assertEqual(javaSplit("version 12 "), ["version", "12"])
        self.assertEqual(javaSplit("a  b  "), ["a", "", "b"])
        self.assertEqual(javaSplit(" a"), ["", "a"])
        self.assertEqual(javaSplit(""), [""])
        self.assertEqual(javaSplit("   "), [])
        self.assertEqual(javaSplit("a\tb"), ["a\tb"])


class MalformedTests(SynchronousTestCase):
    """
    Whatever Java rejects raises L{ProtocolError}, and nothing else.
    """

    def test_malformed(self):
        for wire, opaque in MALFORMED:
            parser = CommandParser()
            error = self.assertRaises(ProtocolError, parser.feed, wire)
            self.assertEqual(error.opaque, opaque, wire)
            self.assertIn("Invalid command", str(error))

    def test_spentAfterError(self):
        """
        After an error the parser refuses everything, even good input.
        """
        parser = CommandParser()
        self.assertRaises(ProtocolError, parser.feed, b"hello\r\n")
        error = self.assertRaises(ProtocolError, parser.feed, b"version 1\r\n")
        self.assertIn("hello", str(error))
        self.assertIsNone(parser.incompleteError())

    def test_parseYieldsCommandsBeforeTheError(self):
        parser = CommandParser()
        stream = parser.parse(b"version 1\r\nstats\r\nbogus\r\nversion 2\r\n")
        self.assertEqual(next(stream), VersionCommand(1))
        self.assertEqual(next(stream), StatsCommand())
        self.assertRaises(ProtocolError, next, stream)

    def test_putBodyConsumedBeforeTokenCount(self):
        """
        A put with a bad token count is only rejected once its body is in
        (Java reads the body first), and then names the count.
        """
        parser = CommandParser()
        self.assertEqual(parser.feed(b"put t 0 5 0\r\nhel"), [])
        error = self.assertRaises(ProtocolError, parser.feed, b"lo")
        self.assertIn("6, 7 or 8 tokens", str(error))

    def test_bodyTooLarge(self):
        parser = CommandParser(maxBodySize=10)
        self.assertEqual(parser.feed(b"value 10 1\r\n"), [])
        error = self.assertRaises(ProtocolError, CommandParser(maxBodySize=10).feed,
                                  b"value 11 1\r\n")
        self.assertIn("exceeds the maximum", str(error))
        self.assertEqual(error.opaque, 1)

    def test_lineTooLong(self):
        parser = CommandParser(maxLineLength=10)
        self.assertEqual(parser.feed(b"version 12"), [])
        self.assertRaises(ProtocolError, parser.feed, b"3")
        self.assertRaises(
            ProtocolError, CommandParser(maxLineLength=10).feed, b"version 123\r\n"
        )
        self.assertEqual(
            CommandParser(maxLineLength=10).feed(b"version 12\r\n"), [VersionCommand(12)]
        )

    def test_bareLineFeedIsNoTerminator(self):
        """
        Only CR LF ends a line: C{stats LF} waits, then reads as a bad word.
        """
        parser = CommandParser()
        self.assertEqual(parser.feed(b"stats\n"), [])
        self.assertIsNotNone(parser.incompleteError())
        error = self.assertRaises(ProtocolError, parser.feed, b"\r\n")
        self.assertIn('expected "sync"', str(error))

    def test_incompleteBody(self):
        parser = CommandParser()
        parser.feed(b"put t 0 5 0 1 -9\r\nhel")
        error = parser.incompleteError()
        self.assertIsInstance(error, ProtocolError)
        self.assertEqual(error.opaque, -9)
        self.assertIn("3 of 5 body bytes", str(error))

    def test_incompleteLine(self):
        parser = CommandParser()
        parser.feed(b"version 1\r\nvers")
        self.assertIn("unterminated", str(parser.incompleteError()))

    def test_completeInput(self):
        parser = CommandParser()
        parser.feed(b"version 1\r\n")
        self.assertIsNone(parser.incompleteError())

    @settings(max_examples=200, deadline=None)
    @given(st.binary(max_size=80))
    def test_arbitraryBytes(self, data):
        """
        Any input gives commands or L{ProtocolError}, nothing else.
        """
        try:
            CommandParser().feed(data)
        except ProtocolError:
            pass

    @settings(max_examples=200, deadline=None)
    @given(
        st.lists(
            st.sampled_from(
                ["put", "get", "offset", "stats", "version", "value", "result",
                 "sync", "transaction", "quit", "", "-1", "0", "7", "x", "TX:s:1",
                 "XID:1:ab:cd:q", "null", "BEGIN", "RECOVER", "2147483648"]
            ),
            min_size=1,
            max_size=9,
        ),
        st.binary(max_size=10),
    )
    def test_arbitraryTokens(self, tokens, tail):
        try:
            CommandParser().feed(" ".join(tokens).encode() + b"\r\n" + tail)
        except ProtocolError:
            pass


class RoundTripTests(SynchronousTestCase):
    """
    Every command decodes from its own encoding, whatever the chunking.
    """

    @settings(max_examples=300, deadline=None)
    @given(strategies.commands)
    def test_roundTrip(self, command):
        self.assertEqual(CommandParser().feed(command.encode()), [command])

    @settings(max_examples=100, deadline=None)
    @given(st.lists(strategies.commands, max_size=8), st.data())
    def test_anySplit(self, commands, data):
        """
        Feeding a stream split at arbitrary points yields the same commands
        as feeding it whole.
        """
        stream = b"".join(command.encode() for command in commands)
        cuts = sorted(
            data.draw(st.lists(st.integers(0, len(stream)), max_size=20))
        )
        parser = CommandParser()
        decoded = []
        start = 0
        for cut in cuts + [len(stream)]:
            decoded.extend(parser.feed(stream[start:cut]))
            start = cut
        self.assertEqual(decoded, commands)
        self.assertEqual(CommandParser().feed(stream), commands)
        self.assertIsNone(parser.incompleteError())

    def test_byteByByte(self):
        stream = b"".join(wire for wire, _ in GOLDEN)
        parser = CommandParser()
        decoded = []
        for index in range(len(stream)):
            decoded.extend(parser.feed(stream[index : index + 1]))
        self.assertEqual(decoded, [command for _, command in GOLDEN])


class UnfinishedTests(SynchronousTestCase):
    """
    L{CommandParser.bufferedBytes} and L{CommandParser.abandon}: what the
    broker's bounds on requests being received rely on.
    """

    @settings(max_examples=100, deadline=None)
    @given(st.lists(strategies.commands, min_size=1, max_size=6), st.data())
    def test_bufferedBoundedByFed(self, commands, data):
        """
        At every cut the parser holds no more than the bytes fed since the
        end of the last complete command, and nothing once the stream ends
        between commands.
        """
        stream = b"".join(command.encode() for command in commands)
        ends = []
        position = 0
        for command in commands:
            position += len(command.encode())
            ends.append(position)
        cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=10)))
        parser = CommandParser()
        start = 0
        for cut in cuts + [len(stream)]:
            parser.feed(stream[start:cut])
            start = cut
            completed = max([end for end in ends if end <= cut], default=0)
            self.assertLessEqual(parser.bufferedBytes, cut - completed)
        self.assertEqual(parser.bufferedBytes, 0)

    @settings(max_examples=100, deadline=None)
    @given(strategies.commands, st.data())
    def test_abandon(self, command, data):
        """
        Abandoning frees the buffer, spends the parser, and names the
        opaque of a command whose header line was read.
        """
        wire = command.encode()
        cut = data.draw(st.integers(0, len(wire) - 1))
        parser = CommandParser()
        self.assertEqual(parser.feed(wire[:cut]), [])
        headerRead = b"\r\n" in wire[:cut]
        error = parser.abandon("stopping")
        self.assertEqual(parser.bufferedBytes, 0)
        self.assertEqual(str(error), "stopping")
        if headerRead and hasattr(command, "data"):
            self.assertEqual(error.opaque, command.opaque)
        self.assertRaises(ProtocolError, parser.feed, wire[cut:])


def _generalParse(wire, maxBodySize):
    """
    What the general decoders make of C{wire}: the commands, or the error's
    text and opaque.
    """
    from metamorphosis.protocol import commands

    saved = commands._FAST_PATHS
    commands._FAST_PATHS = {}
    try:
        return _outcome(wire, maxBodySize)
    finally:
        commands._FAST_PATHS = saved


def _outcome(wire, maxBodySize):
    parser = CommandParser(maxBodySize=maxBodySize)
    try:
        return parser.feed(wire), parser.bufferedBytes
    except ProtocolError as e:
        return str(e), e.opaque


_putNumbers = st.one_of(
    st.integers(-(2**31), 2**31 - 1).map(str),
    st.integers(-(2**40), 2**40).map(str),
    st.sampled_from(["0", "-0", "007", "+5", "-", "", "2147483647", "2147483648",
                     "-2147483648", "-2147483649", "0000000001", "1234567890", "٣"]),
)


class WholePutTests(SynchronousTestCase):
    """
    The fast path of a whole put (C{_WHOLE_PUT}) decodes exactly what the
    general decoders decode, and leaves everything else to them.
    """

    @settings(max_examples=500, deadline=None)
    @given(
        st.one_of(st.sampled_from(["test", "meta-test", "a", "é", "", "TX:1"]),
                  st.text(min_size=0, max_size=6)),
        _putNumbers, st.one_of(st.integers(0, 20).map(str), _putNumbers), _putNumbers,
        _putNumbers, _putNumbers, st.binary(max_size=20), st.integers(0, 30),
        st.sampled_from([b"", b"version 3\r\n", b"put t 0 1 0 5 6\r\nx"]),
    )
    def test_sameAsGeneral(self, topic, partition, length, flag, crc, opaque, body,
                           maxBodySize, tail):
        line = " ".join(["put", topic, partition, length, flag, crc, opaque])
        wire = line.encode("utf-8") + b"\r\n" + body + tail
        self.assertEqual(_outcome(wire, maxBodySize), _generalParse(wire, maxBodySize))

    @settings(max_examples=500, deadline=None)
    @given(
        st.sampled_from(["test", "é"]), st.sampled_from(["0", "-1", "+1"]),
        st.one_of(st.integers(0, 20).map(str), _putNumbers), _putNumbers, _putNumbers,
        st.one_of(st.sampled_from(["TX:s:1", "TX:s:+007", "TX:s:1:", "TX:s:", "TX:a:b:1",
                                   "XID:1:ABcd:EF:q", "XID:1:00:00", "null", "123", "TX:é:1"]),
                  st.text(min_size=1, max_size=12).filter(lambda t: " " not in t)),
        _putNumbers, st.binary(max_size=20), st.integers(0, 30),
    )
    def test_transactionalSameAsGeneral(self, topic, partition, length, flag, crc, key, opaque,
                                        body, maxBodySize):
        """
        A put in a transaction (the key before the opaque) takes the fast
        path too, with its key in canonical form; a key Java refuses is
        refused as the general decoder refuses it.
        """
        line = " ".join(["put", topic, partition, length, flag, crc, key, opaque])
        wire = line.encode("utf-8") + b"\r\n" + body
        self.assertEqual(_outcome(wire, maxBodySize), _generalParse(wire, maxBodySize))

    def test_javaTransactionalPut(self):
        """
        A transactional put as the Java client sends it takes the fast
        path (C{_WHOLE_PUT} matches it) and decodes to the general
        decoder's command.
        """
        from metamorphosis.protocol import commands

        line = b"put meta-test 0 5 0 1425829533 TX:127.0.0.1-1795705128537-1:1 -2147483647"
        self.assertIsNotNone(commands._WHOLE_PUT.fullmatch(line))
        wire = line + b"\r\nhello"
        self.assertEqual(CommandParser().feed(wire), [
            PutCommand("meta-test", 0, b"hello", 0, -2147483647, 1425829533,
                       "TX:127.0.0.1-1795705128537-1:1")])
        self.assertEqual(_outcome(wire, 100), _generalParse(wire, 100))

    def test_javaPut(self):
        """
        A put as the Java client sends it, in one read or cut anywhere.
        """
        wire = b"put meta-test -1 5 3 907060870 -2147483648\r\nhelloput t 0 0 0 0 7\r\n"
        expected = [PutCommand("meta-test", -1, b"hello", 3, -2147483648, 907060870),
                    PutCommand("t", 0, b"", 0, 7, 0)]
        self.assertEqual(CommandParser().feed(wire), expected)
        for cut in range(len(wire)):
            parser = CommandParser()
            self.assertEqual(parser.feed(wire[:cut]) + parser.feed(wire[cut:]), expected)


class WholeTransactionTests(SynchronousTestCase):
    """
    The fast path of a C{transaction} line (C{_WHOLE_TRANSACTION}) decodes
    exactly what the general decoder decodes, and leaves everything else
    to it.
    """

    @settings(max_examples=500, deadline=None)
    @given(
        st.one_of(st.sampled_from(["TX:s:1", "TX:s:+007", "TX:s:1:", "TX:s:", "XID:1:ABcd:EF:q",
                                   "null", "123", "TX:é:1"]),
                  st.text(min_size=0, max_size=10).filter(lambda t: " " not in t)),
        st.sampled_from(["s", "127.0.0.1-1795705128537-1", "é", ""]),
        st.one_of(st.sampled_from(["BEGIN", "COMMIT_ONE_PHASE", "ROLLBACK", "END", "begin",
                                   "NOPE"]), st.text(max_size=5)),
        st.lists(st.one_of(_putNumbers, st.sampled_from(["q", "0", "10"])), max_size=2),
        _putNumbers,
        st.sampled_from([b"", b"version 3\r\n", b"transaction TX:s:2 s COMMIT_ONE_PHASE 9\r\n"]),
    )
    def test_sameAsGeneral(self, key, sessionId, kind, middle, opaque, tail):
        line = " ".join(["transaction", key, sessionId, kind] + middle + [opaque])
        wire = line.encode("utf-8") + b"\r\n" + tail
        self.assertEqual(_outcome(wire, 100), _generalParse(wire, 100))

    def test_javaTransactions(self):
        """
        BEGIN (with its timeout) and COMMIT as the Java producer sends them
        take the fast path.
        """
        from metamorphosis.protocol import commands

        key = "TX:127.0.0.1-1795705128537-1:1"
        begin = f"transaction {key} 127.0.0.1-1795705128537-1 BEGIN 10 -2147483648".encode()
        commit = f"transaction {key} 127.0.0.1-1795705128537-1 COMMIT_ONE_PHASE -2147483645"
        commit = commit.encode()
        for line in (begin, commit):
            self.assertIsNotNone(commands._WHOLE_TRANSACTION.fullmatch(line))
        wire = begin + b"\r\n" + commit + b"\r\n"
        self.assertEqual(CommandParser().feed(wire), [
            TransactionCommand(key, "127.0.0.1-1795705128537-1", "BEGIN", -2147483648, 10),
            TransactionCommand(key, "127.0.0.1-1795705128537-1", "COMMIT_ONE_PHASE",
                               -2147483645)])
        self.assertEqual(_outcome(wire, 100), _generalParse(wire, 100))


_longNumbers = st.one_of(
    _putNumbers,
    st.integers(-(2**63), 2**63 - 1).map(str),
    st.integers(-(2**70), 2**70).map(str),
    st.sampled_from(["9223372036854775807", "9223372036854775808", "-9223372036854775808",
                     "-9223372036854775809", "-5468919651033411584"]),
)


class WholeSyncTests(SynchronousTestCase):
    """
    The fast path of a whole C{sync} (C{_WHOLE_SYNC}) decodes exactly what
    the general decoders decode, and leaves everything else to them.
    """

    @settings(max_examples=500, deadline=None)
    @given(
        st.one_of(st.sampled_from(["test", "meta-test", "a", "é", ""]), st.text(min_size=0, max_size=6)),
        _putNumbers, st.one_of(st.integers(0, 20).map(str), _putNumbers), _putNumbers,
        _longNumbers, _putNumbers, _putNumbers, st.booleans(), st.binary(max_size=20),
        st.integers(0, 30),
        st.sampled_from([b"", b"version 3\r\n", b"sync t 0 1 0 5 6 7\r\nx", b"stats  4\r\n"]),
    )
    def test_sameAsGeneral(self, topic, partition, length, flag, msgId, crc, opaque, withCrc, body,
                           maxBodySize, tail):
        tokens = ["sync", topic, partition, length, flag, msgId] + ([crc] if withCrc else []) + [opaque]
        wire = " ".join(tokens).encode("utf-8") + b"\r\n" + body + tail
        self.assertEqual(_outcome(wire, maxBodySize), _generalParse(wire, maxBodySize))

    def test_masterSync(self):
        """
        A sync as a sync master sends it, in one read or cut anywhere.
        """
        wire = (SyncCommand("meta-test", 0, b"hello", 3, -5468919651033411584, -2147483648, 907060870).encode()
                + SyncCommand("t", 1, b"", 0, 5, 7, -1).encode())
        expected = [SyncCommand("meta-test", 0, b"hello", 3, -5468919651033411584, -2147483648, 907060870),
                    SyncCommand("t", 1, b"", 0, 5, 7, -1)]
        self.assertEqual(CommandParser().feed(wire), expected)
        for cut in range(len(wire)):
            parser = CommandParser()
            self.assertEqual(parser.feed(wire[:cut]) + parser.feed(wire[cut:]), expected)


def _parseInChunks(wire, cuts, syncBatches, maxBodySize, putBatches=False):
    """
    What a parser makes of C{wire} fed in pieces cut at C{cuts}: the
    commands it yields (a L{SyncBatch} or a L{PutBatch} as it is), then the
    error's text and opaque or the bytes it still holds.
    """
    parser = CommandParser(maxBodySize=maxBodySize, syncBatches=syncBatches, putBatches=putBatches)
    decoded = []
    pieces = [wire[start:end] for start, end in zip([0] + cuts, cuts + [len(wire)])]
    try:
        for piece in pieces:
            for command in parser.parse(piece):
                decoded.append(command)
    except ProtocolError as e:
        return decoded, (str(e), e.opaque)
    return decoded, parser.bufferedBytes


def _flatten(decoded):
    flat = []
    for command in decoded:
        if isinstance(command, SyncBatch):
            flat.extend(command.syncs)
        elif isinstance(command, PutBatch):
            flat.extend(command.puts)
        else:
            flat.append(command)
    return flat


#: A sync as a sync master sends it (a topic the fast path takes, its
#: checksum), which the parser batches.
_masterSyncs = st.builds(
    SyncCommand,
    st.sampled_from(["meta-test", "t", "_metaq_slave_status_test"]),
    st.integers(0, 3),
    st.binary(max_size=30),
    st.integers(0, 3),
    st.integers(-(2**63), 2**63 - 1),
    st.integers(-(2**31), 2**31 - 1),
    st.integers(-(2**31), 2**31 - 1),
)


class SyncBatchTests(SynchronousTestCase):
    """
    With C{syncBatches}, the whole syncs in a row that one L{CommandParser.parse}
    completes come as one L{SyncBatch}; nothing else changes.
    """

    @settings(max_examples=300, deadline=None)
    @given(
        st.lists(st.one_of(_masterSyncs, _masterSyncs, strategies.commands), max_size=12),
        st.sampled_from([b"", b"sync t 0 5 0 1 2 3\r\nab", b"sync t 0 1 0 5 6\r\n\r\n",
                         b"bogus\r\n", b"sync t 0 99999 0 1 2 3\r\n"]),
        st.data(),
        st.sampled_from([1000, 20]),
    )
    def test_sameCommands(self, commands, tail, data, maxBodySize):
        """
        In any chunking, the commands are those the parser gives without
        C{syncBatches}, in the same order, with the same error or the same
        bytes left; a batch holds two syncs or more, all whole in one
        input, and is followed by what is not a whole sync.
        """
        wire = b"".join(command.encode() for command in commands) + tail
        cuts = sorted(set(data.draw(st.lists(st.integers(0, len(wire)), max_size=4))))
        batched, batchedEnd = _parseInChunks(wire, cuts, True, maxBodySize)
        plain, plainEnd = _parseInChunks(wire, cuts, False, maxBodySize)
        self.assertEqual((_flatten(batched), batchedEnd), (plain, plainEnd))
        for command in batched:
            if isinstance(command, SyncBatch):
                self.assertGreaterEqual(len(command.syncs), 2)
                self.assertTrue(all(isinstance(sync, SyncCommand) for sync in command.syncs))

    def test_batches(self):
        """
        The syncs of one input come together; a command between them, a
        sync whose body is still arriving, and a sync alone do not.
        """
        syncs = [SyncCommand("meta-test", 0, b"m%d" % (i,), 0, 100 + i, i, 7) for i in range(5)]
        version = VersionCommand(9)
        wire = b"".join(sync.encode() for sync in syncs[:3]) + version.encode() + syncs[3].encode()
        last = syncs[4].encode()
        parser = CommandParser(syncBatches=True)
        self.assertEqual(parser.feed(wire + last[:-1]), [SyncBatch(syncs[:3]), version, syncs[3]])
        self.assertEqual(parser.feed(last[-1:]), [syncs[4]])
        self.assertEqual(CommandParser().feed(wire), syncs[:3] + [version, syncs[3]])

    def test_encode(self):
        """
        A batch encodes as its syncs one after the other.
        """
        syncs = [SyncCommand("t", 1, b"x", 0, 5, 7, 3), SyncCommand("t", 0, b"", 0, 6, 8, -1)]
        self.assertEqual(SyncBatch(syncs).encode(), syncs[0].encode() + syncs[1].encode())


#: A put as the Java producer sends it (a topic the fast path takes, its
#: checksum), which the parser batches; and one it does not (partition -1,
#: a transaction key).
_producerPuts = st.builds(
    PutCommand,
    st.sampled_from(["meta-test", "t"]),
    st.integers(0, 3),
    st.binary(max_size=30),
    st.integers(0, 3),
    st.integers(-(2**31), 2**31 - 1),
    st.integers(-(2**31), 2**31 - 1),
)
_unbatchedPuts = st.one_of(
    st.builds(PutCommand, st.just("t"), st.just(-1), st.binary(max_size=5), st.just(0),
              st.integers(0, 9), st.integers(-1, 9)),
    st.builds(PutCommand, st.just("t"), st.just(0), st.binary(max_size=5), st.just(0),
              st.integers(0, 9), st.integers(-1, 9), st.just("TX:a:1")),
)


class PutBatchTests(SynchronousTestCase):
    """
    With C{putBatches}, the whole plain puts in a row that one
    L{CommandParser.parse} completes come as one L{PutBatch}; nothing else
    changes.
    """

    @settings(max_examples=300, deadline=None)
    @given(
        st.lists(st.one_of(_producerPuts, _producerPuts, _unbatchedPuts, strategies.commands),
                 max_size=12),
        st.sampled_from([b"", b"put t 0 5 0 1 2\r\nab", b"put t 0 1 0 5 6\r\n\r\n",
                         b"bogus\r\n", b"put t 0 99999 0 1 2\r\n"]),
        st.data(),
        st.sampled_from([1000, 20]),
    )
    def test_sameCommands(self, commands, tail, data, maxBodySize):
        """
        In any chunking, the commands are those the parser gives without
        C{putBatches}, in the same order, with the same error or the same
        bytes left; a batch holds two plain puts or more (a checksum, no
        transaction key, a partition of 0 or more).
        """
        wire = b"".join(command.encode() for command in commands) + tail
        cuts = sorted(set(data.draw(st.lists(st.integers(0, len(wire)), max_size=4))))
        batched, batchedEnd = _parseInChunks(wire, cuts, False, maxBodySize, putBatches=True)
        plain, plainEnd = _parseInChunks(wire, cuts, False, maxBodySize)
        self.assertEqual((_flatten(batched), batchedEnd), (plain, plainEnd))
        for command in batched:
            if isinstance(command, PutBatch):
                self.assertGreaterEqual(len(command.puts), 2)
                for put in command.puts:
                    self.assertIsInstance(put, PutCommand)
                    self.assertIsNone(put.transactionKey)
                    self.assertGreaterEqual(put.partition, 0)

    def test_batches(self):
        """
        The puts of one input come together; a command between them, a put
        in a transaction, a put to partition -1, a put whose body is still
        arriving and a put alone do not.
        """
        puts = [PutCommand("meta-test", i % 2, b"m%d" % (i,), 0, i, 7) for i in range(6)]
        version = VersionCommand(9)
        inTransaction = PutCommand("meta-test", 0, b"x", 0, 11, 7, "TX:a:1")
        anywhere = PutCommand("meta-test", -1, b"y", 0, 12, 7)
        wire = (b"".join(put.encode() for put in puts[:3]) + version.encode() + puts[3].encode()
                + inTransaction.encode() + puts[4].encode() + anywhere.encode())
        last = puts[5].encode()
        parser = CommandParser(putBatches=True)
        self.assertEqual(parser.feed(wire + last[:-1]),
                         [PutBatch(puts[:3]), version, puts[3], inTransaction, puts[4], anywhere])
        self.assertEqual(parser.feed(last[-1:]), [puts[5]])
        self.assertEqual(CommandParser().feed(wire)[:4], puts[:3] + [version])

    def test_encode(self):
        """
        A batch encodes as its puts one after the other.
        """
        puts = [PutCommand("t", 1, b"x", 0, 5, 7), PutCommand("t", 0, b"", 0, 6, -1)]
        self.assertEqual(PutBatch(puts).encode(), puts[0].encode() + puts[1].encode())


class FastConstructorTests(SynchronousTestCase):
    """
    L{newPut}, L{newResult}, L{newSync} and L{newTransaction} make what the
    dataclasses' constructors make.
    """

    @settings(max_examples=100, deadline=None)
    @given(st.text(), st.integers(), st.binary(), st.integers(), st.integers(), st.integers(),
           st.one_of(st.none(), st.text()))
    def test_put(self, topic, partition, data, flag, opaque, checksum, key):
        made = newPut(topic, partition, data, flag, opaque, checksum, key)
        expected = PutCommand(topic, partition, data, flag, opaque, checksum, key)
        self.assertIs(type(made), PutCommand)
        self.assertEqual((made, hash(made), repr(made), made.encode()),
                         (expected, hash(expected), repr(expected), expected.encode()))

    @settings(max_examples=100, deadline=None)
    @given(st.text(), st.integers(), st.binary(), st.integers(), st.integers(), st.integers(), st.integers())
    def test_sync(self, topic, partition, data, flag, msgId, opaque, checksum):
        made = newSync(topic, partition, data, flag, msgId, opaque, checksum)
        expected = SyncCommand(topic, partition, data, flag, msgId, opaque, checksum)
        self.assertIs(type(made), SyncCommand)
        self.assertEqual((made, hash(made), repr(made), made.encode()),
                         (expected, hash(expected), repr(expected), expected.encode()))

    @settings(max_examples=100, deadline=None)
    @given(st.text(), st.text(), st.sampled_from(TRANSACTION_TYPES), st.integers(),
           st.integers())
    def test_transaction(self, key, sessionId, kind, opaque, timeout):
        made = newTransaction(key, sessionId, kind, opaque, timeout)
        expected = TransactionCommand(key, sessionId, kind, opaque, timeout)
        self.assertIs(type(made), TransactionCommand)
        self.assertEqual((made, hash(made), repr(made), made.encode()),
                         (expected, hash(expected), repr(expected), expected.encode()))

    @settings(max_examples=100, deadline=None)
    @given(st.integers(), st.binary(), st.integers())
    def test_result(self, code, body, opaque):
        made = newResult(code, body, opaque)
        expected = ResultCommand(code, body, opaque)
        self.assertIs(type(made), ResultCommand)
        self.assertEqual((made, hash(made), repr(made), made.encode()),
                         (expected, hash(expected), repr(expected), expected.encode()))


class EncodeSyncsTests(SynchronousTestCase):
    """
    L{encodeSyncs}, what a sync master writes for the puts of one read to a
    partition, is the encoding of the C{sync} commands they stand for, each
    with its opaque.
    """

    @given(strategies.tokens, strategies.int32,
           st.lists(st.tuples(strategies.int64, strategies.int32, strategies.bodies, strategies.int32,
                              strategies.int32), max_size=5))
    def test_sameAsCommands(self, topic, partition, syncs):
        commands = [SyncCommand(topic, partition, body, flag, msgId, opaque, crc)
                    for msgId, flag, body, crc, opaque in syncs]
        encoded = encodeSyncs(topic, partition, [sync[:4] for sync in syncs], [sync[4] for sync in syncs])
        self.assertEqual(encoded, b"".join(command.encode() for command in commands))
        self.assertEqual(CommandParser().feed(encoded), commands)

"""
The codec against the byte-exact captures of the Java client and broker
(C{tests/data/transcripts/raw/*.jsonl}, see L{tests.captures}).
"""


from twisted.trial.unittest import SynchronousTestCase

from metamorphosis.protocol.commands import (
    DEFAULT_OPAQUE,
    CommandParser,
    ProtocolError,
    StatsCommand,
    VersionCommand,
)
from tests.captures import capturePath, recordedStreams

# The hand-written ("raw") scenarios that Java cannot reject by design.
_MALFORMED = "16-malformed-commands.jsonl"


class TranscriptTests(SynchronousTestCase):
    def test_everyStreamDecodesAndReencodes(self):
        """
        Every recorded stream, requests and responses, decodes completely,
        and each command re-encodes to its recorded bytes.  The only
        exceptions are hand-written C{stats} and C{version} lines without an
        opaque, which no Java encoder writes: those re-encode to the Java
        form with the default opaque.
        """
        files = sorted(capturePath("raw").glob("*.jsonl"))
        self.assertGreater(len(files), 20)
        counts = {}
        for path in files:
            for (connection, direction), stream in recordedStreams(path).items():
                if path.name == _MALFORMED and direction == "C->S" and connection < 7:
                    continue
                where = f"{path.name} #{connection} {direction}"
                parser = CommandParser()
                commands = parser.feed(stream)
                self.assertIsNone(parser.incompleteError(), where)
                self._assertReencodes(stream, commands, where)
                for command in commands:
                    name = type(command).__name__
                    counts[name] = counts.get(name, 0) + 1
        # Every command of the protocol occurs in the captures.
        self.assertEqual(
            sorted(counts),
            sorted(
                ["PutCommand", "GetCommand", "OffsetCommand", "StatsCommand",
                 "VersionCommand", "QuitCommand", "TransactionCommand",
                 "SyncCommand", "ResultCommand", "ValueCommand"]
            ),
        )

    def _assertReencodes(self, stream, commands, where):
        position = 0
        for command in commands:
            encoded = command.encode()
            if stream.startswith(encoded, position):
                position += len(encoded)
                continue
            end = stream.index(b"\r\n", position) + 2
            line = stream[position:end]
            self.assertIsInstance(command, (StatsCommand, VersionCommand), where)
            self.assertEqual(command.opaque, DEFAULT_OPAQUE, where)
            self.assertEqual(CommandParser().feed(encoded)[0].opaque, DEFAULT_OPAQUE)
            self.assertEqual(line, encoded.replace(b"  ", b" ").replace(b" 2147483647", b""))
            position = end
        self.assertEqual(position, len(stream), where)

    def test_malformedConnections(self):
        """
        The six connections the Java broker closed without a reply are
        exactly the ones our decoder rejects.
        """
        streams = recordedStreams(capturePath("raw", _MALFORMED))
        for connection in range(1, 7):
            self.assertNotIn((connection, "S->C"), streams)
            self.assertRaises(
                ProtocolError, CommandParser().feed, streams[(connection, "C->S")]
            )

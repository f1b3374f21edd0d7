"""
Decode and encode rates of the wire codec, one core.

    .venv/bin/python benchmarks/codec.py [--seconds S]

Decoding feeds a prepared stream to a L{CommandParser} in TCP-sized chunks
(64 KiB, and 1460 bytes like a single Ethernet segment); encoding calls
C{encode()} on prepared commands.  It also times the alternative framing,
Twisted's C{LineReceiver} in raw mode for the bodies, handing each framed
command to the same codec, which is what L{MetaProtocol} would cost if it
were built on C{LineReceiver} (see C{metamorphosis/protocol/framing.py}).
"""

import argparse
import time

from twisted.internet.testing import StringTransport
from twisted.protocols.basic import LineReceiver

from metamorphosis.protocol.commands import (
    CommandParser,
    GetCommand,
    PutCommand,
    ValueCommand,
    javaSplit,
    valueHeader,
)
from metamorphosis.protocol.framing import MetaProtocol

KIB = 1024
MIB = 1024 * KIB
_BODY_LENGTH_INDEX = {"put": 3, "sync": 3, "value": 1, "result": 2}


def rate(function, count, seconds):
    """
    Best rate (count per second) of C{function()}, run repeatedly for
    about C{seconds}.
    """
    best = 0.0
    deadline = time.perf_counter() + seconds
    while True:
        start = time.perf_counter()
        function()
        elapsed = time.perf_counter() - start
        best = max(best, count / elapsed)
        if start + elapsed > deadline:
            return best


def chunked(stream, size):
    return [stream[i : i + size] for i in range(0, len(stream), size)]


class _LineFramed(LineReceiver):
    """
    The C{LineReceiver} alternative: it finds the lines and the bodies, and
    the codec decodes each framed command.
    """

    MAX_LENGTH = 64 * KIB
    delimiter = b"\r\n"

    def __init__(self):
        self.parser = CommandParser()
        self.count = 0
        self._line = b""
        self._body = bytearray()
        self._need = 0

    def lineReceived(self, line):
        tokens = javaSplit(line.decode("utf-8"))
        index = _BODY_LENGTH_INDEX.get(tokens[0])
        if index is None:
            self.count += len(self.parser.feed(line + b"\r\n"))
            return
        self._line = line
        self._need = int(tokens[index])
        self._body = bytearray()
        self.setRawMode()

    def rawDataReceived(self, data):
        self._body += data
        if len(self._body) >= self._need:
            rest = bytes(self._body[self._need :])
            del self._body[self._need :]
            self.count += len(self.parser.feed(self._line + b"\r\n" + self._body))
            self.setLineMode(rest)


class _Counting(MetaProtocol):
    count = 0

    def commandReceived(self, command):
        self.count += 1


def decodeWithParser(chunks):
    parser = CommandParser()
    return sum(len(parser.feed(chunk)) for chunk in chunks)


def decodeWithLineReceiver(chunks):
    framed = _LineFramed()
    framed.makeConnection(StringTransport())
    for chunk in chunks:
        framed.dataReceived(chunk)
    return framed.count


def decodeWithProtocol(chunks):
    receiver = _Counting()
    receiver.makeConnection(StringTransport())
    for chunk in chunks:
        receiver.dataReceived(chunk)
    return receiver.count


def gather(chunks):
    buffer = bytearray()
    for chunk in chunks:
        buffer += chunk
    return bytes(buffer)


def encodeAll(command):
    for _ in range(1000):
        command.encode()


def main():
    options = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    options.add_argument("--seconds", type=float, default=1.0,
                         help="time spent on each figure (default 1)")
    seconds = options.parse_args().seconds

    put = PutCommand("test", 0, b"x" * KIB, 0, -2147483648, 907060870)
    get = GetCommand("test", "group1", 0, 123456789, MIB, -2147483646)
    values = {
        "value 1 KiB": ValueCommand(b"x" * KIB, -2147483646),
        "value 1 MiB": ValueCommand(b"x" * MIB, -2147483646),
    }

    print("decode (commands/s, one core)")
    cases = [("put 1 KiB", put, 20000), ("get", get, 50000)]
    cases += [(name, command, max(20, 20 * MIB // len(command.data)))
              for name, command in values.items()]
    for name, command, count in cases:
        stream = command.encode() * count
        for size in (64 * KIB, 1460):
            chunks = chunked(stream, size)
            assert decodeWithParser(chunks) == count
            assert decodeWithLineReceiver(chunks) == count
            print(f"  {name:12} chunks {size:6}:"
                  f"  CommandParser {rate(lambda: decodeWithParser(chunks), count, seconds):12,.0f}"
                  f"  MetaProtocol {rate(lambda: decodeWithProtocol(chunks), count, seconds):12,.0f}"
                  f"  LineReceiver+codec {rate(lambda: decodeWithLineReceiver(chunks), count, seconds):12,.0f}")

    print("decode of one large value in 64 KiB reads (MB/s), against the floor of"
          " gathering the reads in a bytearray and copying them out once")
    for size in (1 * MIB, 4 * MIB, 16 * MIB, 64 * MIB - 64):
        chunks = chunked(ValueCommand(b"x" * size, 1).encode(), 64 * KIB)
        print(f"  {size // KIB:8} KiB"
              f"  CommandParser {rate(lambda: decodeWithParser(chunks), 1, seconds) * size / 1e6:8,.0f}"
              f"  floor {rate(lambda: gather(chunks), 1, seconds) * size / 1e6:8,.0f}")

    print("encode (commands/s, one core)")
    for name, command in [("put 1 KiB", put), ("get", get)] + list(values.items()):
        print(f"  {name:12}  encode()     {rate(lambda: encodeAll(command), 1000, seconds):12,.0f}")
    print(f"  {'value 1 MiB':12}  valueHeader  "
          f"{rate(lambda: [valueHeader(MIB, i) for i in range(1000)], 1000, seconds):12,.0f}"
          "  (the broker's zero-copy path: the body goes from the file)")


if __name__ == "__main__":
    main()

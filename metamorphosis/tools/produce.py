"""
C{metaq produce}: a console producer.  Every line of stdin becomes one
message of a topic (like C{kafka-console-producer}).

    printf 'one\\ntwo\\n' | metaq -z zk:2181 produce --topic t
    metaq -b 127.0.0.1:8123 produce --topic t --partitions 2 < lines.txt

Up to C{--window} messages are in flight; stdin is read (in a thread, so
any kind of stdin works) only while the window has room.  At the end of
stdin it waits for every answer.  The first message the broker refuses or
does not answer stops the tool: exit 1, with the number of messages that
were acknowledged (those are stored, in order per partition).
"""

import os
import sys

from twisted.internet import defer, threads
from twisted.python import usage

from metamorphosis.client.message import Message
from metamorphosis.tools.cli import (
    Progress,
    ToolError,
    Verbosity,
    checkBrokerSource,
    inheritShared,
)
from metamorphosis.tools.tail import startProducer

READ_SIZE = 64 * 1024


class Options(Verbosity, usage.Options):
    synopsis = "--topic TOPIC (--zookeeper HOST:PORT | --broker HOST:PORT) [options] < lines"
    longdesc = "Send every line of stdin as one message."
    optParameters = [
        ["topic", None, None, "the topic (required)"],
        ["zookeeper", "z", None, "find the topic's brokers in this ZooKeeper"],
        ["zk-root", None, "/meta", "MetaQ's root znode"],
        ["broker", "b", None, "send to this broker directly"],
        ["partitions", None, 1, "with --broker: the topic's number of partitions", int],
        ["delimiter", "d", "\\n", "the message separator (\\n, \\r\\n, \\0 or any text)"],
        ["window", "w", 100, "messages sent and not yet acknowledged at most", int],
        ["timeout", "t", 10.0, "seconds to wait for ZooKeeper and the brokers at start",
         float],
    ]

    def postOptions(self):
        inheritShared(self)
        if not self["topic"]:
            raise usage.UsageError("--topic is required")
        checkBrokerSource(self)
        for name in ("partitions", "window"):
            if self[name] < 1:
                raise usage.UsageError("--%s must be at least 1" % (name,))
        self["delimiter"] = self["delimiter"].encode("utf-8").decode("unicode_escape").encode(
            "latin-1")
        if not self["delimiter"]:
            raise usage.UsageError("--delimiter must not be empty")


class Sender:
    """
    Sends messages with at most C{window} unanswered, and remembers the
    first failure.
    """

    def __init__(self, producer, topic, window, progress):
        self.producer = producer
        self.topic = topic
        self.window = window
        self.progress = progress
        self.inFlight = 0
        self.acknowledged = 0
        self.failure = None
        self._room = None

    def send(self, payload):
        self.inFlight += 1
        d = self.producer.sendMessage(Message(self.topic, payload))
        d.addCallbacks(self._answered, self._failed)

    def _answered(self, result):
        if result.success:
            self.acknowledged += 1
            self.progress.add()
        elif self.failure is None:
            self.failure = "the broker refused a message: %s" % (result.errorMessage,)
        self._freed()

    def _failed(self, failure):
        if self.failure is None:
            self.failure = failure.getErrorMessage() or failure.type.__name__
        self._freed()

    def _freed(self):
        self.inFlight -= 1
        if self._room is not None:
            self._room, room = None, self._room
            room.callback(None)

    async def room(self, upTo=None):
        """
        Wait until fewer than C{upTo} (default: the window) are in flight.
        """
        upTo = self.window if upTo is None else upTo
        while self.inFlight >= upTo:
            self._room = defer.Deferred()
            await self._room


async def main(reactor, options, stdin=None, err=None):
    err = err or sys.stderr
    fd = (stdin or sys.stdin.buffer).fileno()
    session, producer = await startProducer(reactor, options)
    progress = Progress("messages sent", err, options)
    sender = Sender(producer, options["topic"], options["window"], progress)
    separator = options["delimiter"]
    try:
        buffer = b""
        while sender.failure is None:
            await sender.room()
            data = await threads.deferToThread(os.read, fd, READ_SIZE)
            *payloads, buffer = (buffer + data).split(separator)
            if not data:
                payloads, buffer = [buffer], b""
            for payload in payloads:
                if payload and sender.failure is None:
                    await sender.room()
                    sender.send(payload)
            if not data:
                break
        await sender.room(1)
    finally:
        progress.done()
        await session.close()
    if sender.failure is not None:
        raise ToolError("%s; %d message(s) acknowledged" % (sender.failure, sender.acknowledged))
    return 0

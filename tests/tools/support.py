"""
What the tool tests share: a real broker process (L{tests.ha.processes}),
running a tool as the user does (C{python -m metamorphosis.tools.<name>}),
and reading a topic back from the broker.
"""

import os
import socket
import sys

from twisted.internet import defer, error, protocol, reactor
from twisted.internet.utils import getProcessOutputAndValue

from metamorphosis.protocol.commands import ValueCommand
from metamorphosis.protocol.records import decodeRecords
from metamorphosis.tools.cli import openBroker
from tests.ha.processes import Broker, serverIni


@defer.inlineCallbacks
def startBroker(testCase, topics, zkConnect=None, zkRoot="/meta"):
    """
    A C{twistd metaq} process carrying C{topics} (name -> partitions).

    @return: a Deferred firing with the L{Broker} once it listens.
    """
    broker = Broker(testCase, "tools", serverIni(0, tuple(topics.items()), zkConnect, zkRoot))
    yield broker.start()
    return broker


def brokerUrl(broker):
    return "meta://127.0.0.1:%d" % (broker.port,)


def runTool(name, *args):
    """
    Run C{python -m metamorphosis.tools.<name> args} to its end.

    @return: a Deferred firing with C{(stdout, stderr, exit status)} as text.
    """
    d = getProcessOutputAndValue(
        sys.executable, ("-m", "metamorphosis.tools." + name) + args, env=os.environ)
    return d.addCallback(lambda r: (r[0].decode(), r[1].decode(), r[2]))


def runMetaq(*args, stdin=None):
    """
    Run C{metaq args} (as C{python -m metamorphosis.tools.main}) to its end,
    with C{stdin} (bytes) as its standard input if given.

    @return: a Deferred firing with C{(stdout, stderr, exit status)} as text.
    """
    command = (sys.executable, "-m", "metamorphosis.tools.main") + args
    if stdin is None:
        d = getProcessOutputAndValue(command[0], command[1:], env=os.environ)
    else:
        d = _withInput(command, stdin)
    return d.addCallback(lambda r: (r[0].decode(), r[1].decode(), r[2]))


class _Collect(protocol.ProcessProtocol):
    def __init__(self, stdin):
        self.stdin = stdin
        self.out, self.err = [], []
        self.done = defer.Deferred()

    def connectionMade(self):
        self.transport.write(self.stdin)
        self.transport.closeStdin()

    def outReceived(self, data):
        self.out.append(data)

    def errReceived(self, data):
        self.err.append(data)

    def processEnded(self, reason):
        self.done.callback((b"".join(self.out), b"".join(self.err), reason.value.exitCode))


def _withInput(command, stdin):
    collect = _Collect(stdin)
    reactor.spawnProcess(collect, command[0], list(command), env=os.environ)
    return collect.done


class ToolProcess(protocol.ProcessProtocol):
    """
    A long-running tool (the tail) the test stops with SIGTERM; stopped at
    the latest when C{testCase} cleans up, so a failing test leaves no tool
    running.
    """

    def __init__(self, testCase, name, *args):
        self.output = b""
        self.ended = defer.Deferred()
        self.status = None
        self.transport = reactor.spawnProcess(
            self, sys.executable,
            [sys.executable, "-m", "metamorphosis.tools." + name] + list(args), env=os.environ)
        testCase.addCleanup(self.stop)

    def outReceived(self, data):
        self.output += data

    errReceived = outReceived

    def processEnded(self, reason):
        self.status = reason.value.exitCode
        self.ended.callback(self.status)

    def stop(self):
        """
        SIGTERM; the Deferred fires with the exit status.
        """
        try:
            self.transport.signalProcess("TERM")
        except error.ProcessExitedAlready:
            pass
        return self.ended


async def readPartition(client, topic, partition):
    """
    Every message payload of one partition, in order.
    """
    payloads, offset = [], 0
    while True:
        reply = await client.get(topic, "tools-test", partition, offset, 1024 * 1024)
        if not isinstance(reply, ValueCommand):
            return payloads
        records, consumed = decodeRecords(reply.data)
        payloads.extend(record.data for record in records)
        offset += consumed


async def readTopic(broker, topic, partitions):
    """
    The payloads of every partition of C{topic}: partition -> list.
    """
    client = await openBroker(reactor, brokerUrl(broker), 5.0)
    try:
        return {p: await readPartition(client, topic, p) for p in range(partitions)}
    finally:
        client.transport.loseConnection()




def closedPort():
    """
    A loopback port nothing listens on (found free, then released).
    """
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]

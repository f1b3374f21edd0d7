"""
The broker as users run it: C{twistd -n metaq} in its own process.
"""

import os
import re
import signal
import sys

from twisted.internet import defer, error, protocol, reactor
from twisted.trial import unittest

from metamorphosis.protocol.commands import ValueCommand
from metamorphosis.protocol.records import decodeRecords

from tests.broker.client import connect

TWISTD = os.path.join(os.path.dirname(sys.executable), "twistd")


class BrokerProcess(protocol.ProcessProtocol):
    """
    Watches the broker's output for the line saying where it listens.
    """

    def __init__(self):
        self.output = b""
        self.listening = defer.Deferred()
        self.ended = defer.Deferred()

    def outReceived(self, data):
        self.output += data
        match = re.search(rb"listening on IPv4Address\(type='TCP', host='127.0.0.1', port=(\d+)\)",
                          self.output)
        if match and not self.listening.called:
            self.listening.callback(int(match.group(1)))

    errReceived = outReceived

    def processEnded(self, reason):
        if not self.listening.called:
            self.listening.errback(RuntimeError(self.output.decode(errors="replace")))
        self.ended.callback(reason)


class TwistdTests(unittest.TestCase):
    timeout = 60

    def spawn(self, *args):
        process = BrokerProcess()
        workdir = self.mktemp()
        os.makedirs(workdir)
        transport = reactor.spawnProcess(
            process, TWISTD, [TWISTD, "--nodaemon", "--pidfile=", "metaq"] + list(args),
            env=os.environ.copy(), path=workdir)

        def kill():
            try:
                transport.signalProcess("KILL")
            except error.ProcessExitedAlready:
                return
            return process.ended

        self.addCleanup(kill)
        return process, transport, workdir

    @defer.inlineCallbacks
    def test_serverIni(self):
        """
        The plugin starts from a server.ini, serves a put and a get over a
        real socket, and stops cleanly on SIGTERM.
        """
        ini = os.path.abspath(self.mktemp())
        with open(ini, "w") as f:
            f.write("[system]\nbrokerId=3\nnumPartitions=1\ndataPath=data\n"
                    "unflushThreshold=0\n[zookeeper]\nzk.zkEnable=false\n[topic=orders]\n")
        process, transport, workdir = self.spawn(
            "--config", ini, "--port", "tcp:0:interface=127.0.0.1")
        port = yield process.listening
        client = yield connect(reactor, port)
        reply = yield client.put("orders", 0, b"hello", 1)
        self.assertEqual(reply.code, 200, reply)
        reply = yield client.get("orders", "g", 0, 0, 1024, 2)
        self.assertIsInstance(reply, ValueCommand)
        self.assertEqual(decodeRecords(reply.data)[0][0].data, b"hello")
        reply = yield client.request(b"stats config 3\r\n", 3)
        with open(ini, "rb") as f:
            self.assertEqual(reply.body, f.read())
        transport.signalProcess("TERM")
        reason = yield process.ended
        self.assertIsInstance(reason.value, error.ProcessDone, process.output)
        yield client.closed
        self.assertTrue(os.path.isdir(os.path.join(workdir, "data", "orders-0")))
        self.assertNotIn(b"Traceback", process.output)

    @defer.inlineCallbacks
    def test_badConfig(self):
        ini = os.path.abspath(self.mktemp())
        with open(ini, "w") as f:
            f.write("[system]\nbrokerId=1\nunflushTreshold=0\n")
        process, transport, workdir = self.spawn("--config", ini)
        reason = yield process.ended
        self.assertIsInstance(reason.value, error.ProcessTerminated)
        self.assertEqual(reason.value.exitCode, 1)
        self.assertIn(
            f"{ini}: [system] unflushTreshold (line 3): Invalid config key:unflushTreshold,"
            "do you mean 'unflushThreshold'?".encode(), process.output)

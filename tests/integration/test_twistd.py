"""
The broker as users run it: C{twistd -n metaq} in its own process.
"""

import os
import signal
import socket

from twisted.internet import defer, error, reactor, task
from twisted.trial import unittest

from metamorphosis.protocol.commands import ValueCommand
from metamorphosis.protocol.records import decodeRecords
from tests.broker.client import connect
from tests.integration.brokerprocess import TWISTD, BrokerProcess
from tests.waiting import waitFor


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

    def writeIni(self, text):
        """
        Write a C{server.ini} of C{text}; its absolute path.
        """
        ini = os.path.abspath(self.mktemp())
        with open(ini, "w") as f:
            f.write(text)
        return ini

    def spawnOnLoopback(self, ini):
        """
        L{spawn} the broker of C{ini} on a free loopback port.
        """
        return self.spawn("--config", ini, "--port", "tcp:0:interface=127.0.0.1")

    @defer.inlineCallbacks
    def test_serverIni(self):
        """
        The plugin starts from a server.ini, serves a put and a get over a
        real socket, and stops cleanly on SIGTERM.
        """
        ini = self.writeIni("[system]\nbrokerId=3\nnumPartitions=1\ndataPath=data\n"
                            "unflushThreshold=0\n[zookeeper]\nzk.zkEnable=false\n[topic=orders]\n")
        process, transport, workdir = self.spawnOnLoopback(ini)
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
        # SIGHUP re-reads the topic sections.
        reply = yield client.put("refunds", 0, b"x", 4)
        self.assertEqual(reply.code, 500)
        with open(ini, "a") as f:
            f.write("[topic=refunds]\n")
        transport.signalProcess("HUP")
        for attempt in range(50):
            reply = yield client.put("refunds", 0, b"x", 5 + attempt)
            if reply.code == 200:
                break
            yield task.deferLater(reactor, 0.1, lambda: None)
        self.assertEqual(reply.code, 200, reply)
        reply = yield client.get("orders", "g", 0, 0, 1024, 99)
        self.assertIsInstance(reply, ValueCommand)
        transport.signalProcess("TERM")
        reason = yield process.ended
        # twistd stops the reactor, then re-raises the signal to exit as
        # killed by it.
        self.assertEqual(reason.signal, signal.SIGTERM, process.output)
        self.assertIn(b"Main loop terminated.", process.output)
        yield client.closed
        self.assertTrue(os.path.isdir(os.path.join(workdir, "data", "orders-0")))
        self.assertNotIn(b"Traceback", process.output)

    @defer.inlineCallbacks
    def test_secondSigterm(self):
        """
        A second SIGTERM while the broker drains its connections is said in
        one line, not a traceback, and the broker stops as after one.
        """
        ini = self.writeIni("[system]\nbrokerId=3\ndataPath=data\nshutdownDrainSeconds=2\n"
                            "[zookeeper]\nzk.zkEnable=false\n")
        process, transport, workdir = self.spawnOnLoopback(ini)
        port = yield process.listening
        # A client that never closes its side keeps the drain going (the
        # broker waits for it, up to shutdownDrainSeconds).
        idle = socket.create_connection(("127.0.0.1", port))
        self.addCleanup(idle.close)
        transport.signalProcess("TERM")
        yield waitFor(lambda: b"Received SIGTERM, shutting down." in process.output)
        transport.signalProcess("TERM")
        reason = yield process.ended
        self.assertEqual(reason.signal, signal.SIGTERM, process.output)
        self.assertIn(b"Received SIGTERM again: already stopping", process.output)
        self.assertIn(b"Main loop terminated.", process.output)
        self.assertNotIn(b"Traceback", process.output)

    @defer.inlineCallbacks
    def test_badConfig(self):
        ini = self.writeIni("[system]\nbrokerId=1\nunflushTreshold=0\n")
        process, transport, workdir = self.spawn("--config", ini)
        process.listening.addErrback(lambda failure: None)
        reason = yield process.ended
        self.assertIsInstance(reason, error.ProcessTerminated)
        self.assertEqual(reason.exitCode, 1)
        self.assertIn(
            f"{ini}: [system] unflushTreshold (line 3): Invalid config key:unflushTreshold,"
            "do you mean 'unflushThreshold'?".encode(), process.output)

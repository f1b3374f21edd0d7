"""
The broker's log in JSON, as operators ship it: C{twist --log-format=json}
and C{twistd --logger=metamorphosis.broker.jsonlog.observer}.  Every line
must parse and every field of the broker's events must serialise (no
C{unpersistable} markers: addresses are host:port strings), and there is
no "Starting factory <object at 0x...>" noise.
"""

import json
import os
import sys

from twisted.internet import defer, endpoints, protocol, reactor
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, readBody

from metamorphosis.tools.cli import openBroker
from tests.broker.httpsupport import serverIni
from tests.waiting import waitFor
from tests.zookeeper import uniqueRoot, zookeeperAddress

BIN = os.path.dirname(sys.executable)

# Twisted's own JSON writes its logger and the event's source object this
# way whatever the application does.
TWISTED_UNPERSISTABLE = {"log_logger", "log_source"}


class LogProcess(protocol.ProcessProtocol):
    def __init__(self, testCase, executable, arguments, folder):
        self.output = b""
        self.ended = defer.Deferred()
        self.transport = reactor.spawnProcess(
            self, executable, [executable, *arguments], env=os.environ.copy(), path=folder)
        testCase.addCleanup(self.kill)

    def outReceived(self, data):
        self.output += data

    errReceived = outReceived

    def processEnded(self, reason):
        self.ended.callback(None)

    def kill(self):
        if not self.ended.called:
            self.transport.signalProcess("KILL")
        return self.ended


def twistEvents(output):
    return [json.loads(chunk) for chunk in output.decode("utf-8").split("\x1e") if chunk.strip()]


def lineEvents(output):
    return [json.loads(line) for line in output.decode("utf-8").splitlines() if line.strip()]


class JSONLogTests(TestCase):
    timeout = 120

    async def exercise(self, command, arguments, parse):
        """
        Run a broker with ZooKeeper and HTTP, put, get, refuse a put, send
        a malformed request, scrape the HTTP endpoint, reload (SIGHUP) and
        stop it (SIGTERM).

        @return: its log events.
        """
        folder = os.path.abspath(self.mktemp())
        os.makedirs(folder)
        with open(os.path.join(folder, "server.ini"), "w") as f:
            f.write(serverIni({"logs": 2}, zookeeperAddress(), uniqueRoot()))
        process = LogProcess(self, os.path.join(BIN, command), arguments + [
            "metaq", "--config", "server.ini", "--port", "tcp:0:interface=127.0.0.1",
            "--http", "tcp:0:interface=127.0.0.1"], folder)

        def address(text):
            for event in parse(process.output):
                if event.get("log_format", "").startswith(text):
                    return int(event["address"].rsplit(":", 1)[1])
        port = await waitFor(lambda: address("MetaQ broker"), what="the broker's port")
        httpPort = address("HTTP endpoint")
        await waitFor(lambda: any("Registered" in e.get("log_format", "")
                                  for e in parse(process.output)), what="registration")

        client = await openBroker(reactor, "meta://127.0.0.1:%d" % (port,), 10.0)
        self.assertEqual((await client.put("logs", 0, b"hello", 0)).code, 200)
        self.assertNotEqual((await client.put("nosuch", 0, b"hello", 0)).code, 200)
        await client.get("logs", "g", 0, 0, 1024)
        client.transport.loseConnection()
        raw = await endpoints.connectProtocol(
            endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", port), protocol.Protocol())
        raw.transport.write(b"garbage request\r\n")
        for path in (b"metrics", b"status.json", b"ready", b"nosuch"):
            response = await Agent(reactor).request(
                b"GET", b"http://127.0.0.1:%d/%s" % (httpPort, path))
            await readBody(response)
        process.transport.signalProcess("HUP")
        await waitFor(lambda: any("Reloaded" in e.get("log_format", "")
                                  for e in parse(process.output)), what="the reload")
        process.transport.signalProcess("TERM")
        await process.ended
        events = parse(process.output)
        self.assertFalse([e for e in events if "Starting factory" in json.dumps(e)])
        self.assertFalse([e for e in events if e.get("log_failure")],
                         "no failure is logged in normal operation")
        self.assertTrue(any("Removed" in e.get("log_format", "") for e in events))
        return events

    def test_twistJSON(self):
        """
        twist --log-format=json: every record parses; only Twisted's own
        log_logger/log_source are unpersistable.
        """
        async def check():
            events = await self.exercise("twist", ["--log-format=json"], twistEvents)
            for event in events:
                bad = {key for key, value in event.items()
                       if isinstance(value, dict) and value.get("unpersistable")}
                self.assertEqual(bad - TWISTED_UNPERSISTABLE, set(), event)
        return defer.ensureDeferred(check())

    def test_twistdLogger(self):
        """
        twistd --logger=metamorphosis.broker.jsonlog.observer: one JSON
        object per line, none unpersistable, each with its text.
        """
        async def check():
            events = await self.exercise(
                "twistd", ["--nodaemon", "--pidfile=",
                           "--logger=metamorphosis.broker.jsonlog.observer"], lineEvents)
            for event in events:
                self.assertNotIn("unpersistable", json.dumps(event))
                self.assertIsInstance(event["message"], str)
            started = [e for e in events if e.get("log_format", "").startswith("MetaQ broker")]
            self.assertEqual(len(started), 1)
            self.assertRegex(started[0]["message"], r"^MetaQ broker 3 listening on 127\.0\.0\.1:\d+ \(\w+: plain\)$")
            self.assertEqual(started[0]["log_source"], "metamorphosis.broker.service.BrokerService")
        return defer.ensureDeferred(check())

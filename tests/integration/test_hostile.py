"""
A real broker process against hostile clients (docs/limits.md): illegal
topic names, memory held by unfinished requests, too many topics, messages
too large to read, and replies across SIGTERM.
"""

import os
import re
import signal
import sys

from twisted.internet import defer, reactor, task
from twisted.trial import unittest

from metamorphosis.broker.config import MetaConfig, loadConfig
from metamorphosis.protocol.commands import PutCommand, TransactionCommand
from metamorphosis.protocol.records import decodeRecords
from tests.broker.client import connect
from tests.integration.brokerprocess import TWISTD, BrokerProcess, startBroker
from tests.waiting import waitFor


class HostileClientTests(unittest.TestCase):
    timeout = 120

    def startBroker(self, system="", topics="[topic=*]\n", nofile=None, workdir=None):
        """
        Start C{twistd metaq} on a fresh data directory with C{system} keys
        added to C{[system]}.

        @return: a Deferred firing with C{(process, port, workdir)}.
        """
        if workdir is None:
            workdir = os.path.abspath(self.mktemp())
            os.makedirs(workdir)
        ini = os.path.join(workdir, "server.ini")
        with open(ini, "w") as f:
            f.write("[system]\nbrokerId=0\nnumPartitions=1\ndataPath=data\n"
                    "unflushThreshold=0\n" + system
                    + "\n[zookeeper]\nzk.zkEnable=false\n" + topics)
        if nofile is None:
            process = startBroker(reactor, ini, workdir)
        else:
            # The broker under a small open-files limit, set before exec.
            process = BrokerProcess()
            code = ("import os, resource, sys; "
                    f"resource.setrlimit(resource.RLIMIT_NOFILE, ({nofile}, {nofile})); "
                    "os.execv(sys.argv[1], sys.argv[1:])")
            reactor.spawnProcess(
                process, sys.executable,
                [sys.executable, "-c", code, TWISTD, "--nodaemon", "--pidfile=", "metaq",
                 "--config", ini, "--port", "tcp:0:interface=127.0.0.1"],
                env=os.environ.copy(), path=workdir)
        self.addCleanup(process.kill)
        return process.listening.addCallback(lambda port: (process, port, workdir))

    @defer.inlineCallbacks
    def test_illegalTopicNames(self):
        """
        Puts to paths, aliases of an existing topic, NUL and over-long names
        are answered 400 before any file exists; the aliased topic's
        acknowledged messages stay as they were.
        """
        process, port, workdir = yield self.startBroker()
        client = yield connect(reactor, port)
        reply = yield client.put("victim", 0, b"acknowledged", 1)
        self.assertEqual(reply.code, 200)
        before = os.listdir(workdir)
        for opaque, topic in enumerate(
                ["../x", "/tmp/abs-%d" % os.getpid(), "./victim", "../data/victim",
                 "a\x00b", "x" * 300, "app/../../esc"], 2):
            reply = yield client.put(topic, 0, b"hostile", opaque)
            self.assertEqual(reply.code, 400, reply)
            self.assertIn(b"Illegal topic name", reply.body)
            reply = yield client.get(topic, "g", 0, 0, 1024, 100 + opaque)
            self.assertEqual(reply.code, 400, reply)
        self.assertEqual(os.listdir(workdir), before)
        # .keepawake: the block read to keep the disk awake (docs/storage.md).
        self.assertEqual(sorted(os.listdir(os.path.join(workdir, "data"))),
                         [".keepawake", "transactions", "victim-0"])
        self.assertFalse(os.path.exists("/tmp/abs-%d-0" % os.getpid()))
        reply = yield client.get("victim", "g", 0, 0, 1024, 200)
        self.assertIn(b"acknowledged", reply.data)
        self.assertNotIn(b"hostile", reply.data)
        self.assertNotIn(b"Traceback", process.output)

    @defer.inlineCallbacks
    def test_unfinishedRequests(self):
        """
        Connections that declare large bodies, send most of them and then
        trickle bytes: the one going past C{maxUnfinishedRequestBytes} is
        answered 503 at once, the others 400 after C{maxRequestSeconds},
        each closed; a normal client is served meanwhile.
        """
        process, port, workdir = yield self.startBroker(
            "maxUnfinishedRequestBytes=4194304\nmaxRequestSeconds=3\n")
        hostile = []
        replies = []
        for opaque in range(3):
            client = yield connect(reactor, port)
            replies.append(client.expect(opaque))
            client.transport.write(b"put t 0 2097152 0 -1 %d\r\n" % opaque
                                   + b"x" * (1536 * 1024))
            hostile.append(client)

        def trickle():
            for client in hostile:
                if client.transport.connected:
                    client.transport.write(b"x")

        trickling = task.LoopingCall(trickle)
        trickling.start(0.5)
        self.addCleanup(lambda: trickling.running and trickling.stop())
        normal = yield connect(reactor, port)
        reply = yield normal.put("t", 0, b"hello", 99)
        self.assertEqual(reply.code, 200, reply)
        results = yield defer.gatherResults(replies)
        codes = sorted(reply.code for reply in results)
        self.assertEqual(codes, [400, 400, 503], results)
        for reply in results:
            expected = (b"maxUnfinishedRequestBytes" if reply.code == 503
                        else b"not complete within 3 s")
            self.assertIn(expected, reply.body)
        yield defer.gatherResults([client.closed for client in hostile])
        reply = yield normal.put("t", 0, b"again", 100)
        self.assertEqual(reply.code, 200, reply)
        self.assertNotIn(b"Traceback", process.output)

    @defer.inlineCallbacks
    def test_abandonedTransactions(self):
        """
        XA transactions begun without a timeout by connections that then
        close are rolled back after C{maxTxTimeoutInSeconds}; meanwhile
        their messages count against C{maxTransactionBytes}, and a put past
        it is refused.
        """
        process, port, workdir = yield self.startBroker(
            "maxTxTimeoutInSeconds=2\nmaxTransactionBytes=3145728\nmaxTransferSize=4194304\n")
        serial = iter(range(1, 1000))

        @defer.inlineCallbacks
        def beginAndPut(size):
            client = yield connect(reactor, port)
            n = next(serial)
            key = "XID:1:%02x:01:hostile" % (n,)
            opaque = n * 10
            reply = yield client.request(
                TransactionCommand(key, "s%d" % (n,), "BEGIN", opaque, 0, "hostile").encode(),
                opaque)
            self.assertEqual(reply.code, 200, reply)
            reply = yield client.request(
                PutCommand("t", 0, b"x" * size, 0, opaque + 1, -1, key).encode(), opaque + 1)
            client.transport.loseConnection()
            yield client.closed
            return reply

        for i in range(2):
            reply = yield beginAndPut(1024 * 1024)
            self.assertEqual(reply.code, 200, reply)
        reply = yield beginAndPut(2 * 1024 * 1024)
        self.assertEqual(reply.code, 500, reply)
        self.assertIn(b"maxTransactionBytes", reply.body)

        @defer.inlineCallbacks
        def accepted():
            reply = yield beginAndPut(2 * 1024 * 1024)
            return reply.code == 200

        yield waitFor(accepted, timeout=60, interval=0.5,
                      what="the abandoned transactions rolled back")
        self.assertNotIn(b"Traceback", process.output)

    @defer.inlineCallbacks
    def test_unreadableMessage(self):
        """
        A message larger than a get can return is refused, and the
        connection goes on; the largest readable one is stored and read.
        """
        process, port, workdir = yield self.startBroker("maxTransferSize=1048576\n")
        client = yield connect(reactor, port)
        reply = yield client.put("t", 0, b"x" * (4 * 1024 * 1024), 1)
        self.assertEqual(reply.code, 400, reply)
        self.assertIn(b"exceeds maxTransferSize (1048576)", reply.body)
        largest = b"y" * (1048576 - 20)
        reply = yield client.put("t", 0, largest, 2)
        self.assertEqual(reply.code, 200, reply)
        reply = yield client.get("t", "g", 0, 0, 1048576, 3)
        self.assertEqual(len(reply.data), 1048576)
        self.assertIn(largest, reply.data)

    @defer.inlineCallbacks
    def test_tooManyTopics(self):
        """
        Past C{maxAutoCreatedTopics} a put to a new topic is answered with
        an error naming the limit, logged once; existing topics are served.
        """
        process, port, workdir = yield self.startBroker("maxAutoCreatedTopics=3\n")
        client = yield connect(reactor, port)
        for opaque, topic in enumerate(["t1", "t2", "t3"], 1):
            reply = yield client.put(topic, 0, b"x", opaque)
            self.assertEqual(reply.code, 200, reply)
        for opaque in range(10, 30):
            reply = yield client.put("new%d" % (opaque,), 0, b"x", opaque)
            self.assertEqual(reply.code, 500, reply)
            self.assertIn(b"maxAutoCreatedTopics", reply.body)
        reply = yield client.put("t1", 0, b"x", 99)
        self.assertEqual(reply.code, 200, reply)
        self.assertEqual(process.output.count(b"maxAutoCreatedTopics"), 1, process.output)

    @defer.inlineCallbacks
    def test_outOfDescriptors(self):
        """
        Under a small open-files limit, new topics are refused with an
        error saying why before the descriptors run out; existing topics
        and new connections keep working, and nothing is logged with a
        traceback.
        """
        process, port, workdir = yield self.startBroker(
            "reservedFileDescriptors=16\n", nofile=96)
        client = yield connect(reactor, port)
        refused = None
        for opaque in range(1, 200):
            reply = yield client.put("topic%d" % (opaque,), 0, b"x", opaque)
            if reply.code != 200:
                refused = reply
                break
        self.assertIsNotNone(refused, "no topic refused under a limit of 96 files")
        self.assertIn(b"file descriptors", refused.body)
        created = opaque - 1
        self.assertGreater(created, 5)
        reply = yield client.put("topic1", 0, b"again", 500)
        self.assertEqual(reply.code, 200, reply)
        others = []
        for i in range(8):
            other = yield connect(reactor, port)
            reply = yield other.get("topic%d" % (created,), "g", 0, 0, 1024, 600 + i)
            self.assertIn(b"x", reply.data)
            others.append(other)
        for other in others:
            other.transport.loseConnection()
        self.assertNotIn(b"Traceback", process.output)

    @defer.inlineCallbacks
    def test_sigtermAnswersStoredPuts(self):
        """
        Producers pipelining puts when the broker gets SIGTERM: every put
        it stored was answered before its connection closed (so no client
        has reason to send it again), and every answered put is stored.
        """
        process, port, workdir = yield self.startBroker()
        acked = set()
        inFlight = 64
        clients = []

        def pump(client, name):
            sent = [0]

            def sendOne():
                if not client.transport.connected or client.transport.disconnecting:
                    return
                sent[0] += 1
                payload = b"%s-%d" % (name, sent[0])
                d = client.put("drain", 0, payload, sent[0])
                d.addCallback(answered, payload)
                d.addErrback(lambda failure: None)

            def answered(reply, payload):
                self.assertEqual(reply.code, 200, reply)
                acked.add(payload)
                sendOne()

            for i in range(inFlight):
                sendOne()

        for i in range(4):
            client = yield connect(reactor, port)
            clients.append(client)
            pump(client, b"c%d" % (i,))
        yield waitFor(lambda: len(acked) >= 2000, what="2000 puts acknowledged")
        process.transport.signalProcess("TERM")
        reason = yield process.ended
        self.assertEqual(reason.signal, signal.SIGTERM, process.output)
        yield defer.gatherResults([client.closed for client in clients])
        self.assertNotIn(b"Traceback", process.output)

        process, port, workdir = yield self.startBroker(workdir=workdir)
        client = yield connect(reactor, port)
        stored = []
        offset = 0
        while True:
            reply = yield client.get("drain", "g", 0, offset, 1024 * 1024, len(stored) + 1)
            if not hasattr(reply, "data"):
                break
            records, consumed = decodeRecords(reply.data)
            stored.extend(record.data for record in records)
            offset += consumed
        self.assertEqual(len(stored), len(set(stored)))
        self.assertEqual(set(stored) - acked, set(), "stored but never answered")
        self.assertEqual(acked - set(stored), set(), "answered but not stored")


class DocumentationTests(unittest.TestCase):
    """
    The examples of docs/limits.md run as written.
    """

    timeout = 60

    def block(self, language):
        root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        with open(os.path.join(root, "docs", "limits.md")) as f:
            [block] = re.findall(r"```%s\n(.*?)```" % (language,), f.read(), re.S)
        return block

    @defer.inlineCallbacks
    def test_logFileExample(self):
        """
        The broker started with the bounded log file logs to it (on a free
        port instead of the configuration's).
        """
        workdir = os.path.abspath(self.mktemp())
        os.makedirs(workdir)
        with open(os.path.join(workdir, "server.ini"), "w") as f:
            f.write("[system]\ndataPath=data\n[zookeeper]\nzk.zkEnable=false\n")
        command = self.block("sh").strip() + " --port tcp:0:interface=127.0.0.1\n"
        env = dict(os.environ)
        env["PATH"] = os.path.dirname(TWISTD) + os.pathsep + env.get("PATH", "")
        process = BrokerProcess()
        # It logs to the file, not to its output.
        process.listening.addErrback(lambda failure: None)
        reactor.spawnProcess(process, "/bin/bash", ["/bin/bash", "-c", command],
                             env=env, path=workdir)
        self.addCleanup(process.kill)
        log = os.path.join(workdir, "broker.log")

        def listening():
            if os.path.exists(log):
                with open(log) as f:
                    return "listening on" in f.read()

        yield waitFor(listening, what="the broker logging to broker.log")

    def test_limitsExample(self):
        ini = self.block("ini")
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(ini)
        config = loadConfig(path)
        defaults = MetaConfig()
        keys = re.findall(r"^(\w+)=", ini, re.M)
        self.assertEqual(len(keys), 12)
        for key in keys:
            self.assertEqual(getattr(config, key), getattr(defaults, key), key)

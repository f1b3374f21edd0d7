"""
Every Python example of the documentation runs as written.

Each fenced C{```python} block of C{docs/*.md} is a whole program; this
module makes one test of each (C{test_<page>_<n>}, counted from 1 in the
page), which runs it with this checkout's interpreter, in a directory and
a C{HOME} of its own, against a broker of its own registered in ZooKeeper.
The program finds them as a user's program would find theirs, through two
environment variables with the usual defaults:

  - C{METAQ_ZOOKEEPER}, ZooKeeper's address (C{127.0.0.1:2181}); the test
    gives a chroot of its own on the test ZooKeeper, so MetaQ's root
    C{/meta} is the program's alone;
  - C{METAQ_BROKER}, the broker's URL for direct mode
    (C{meta://127.0.0.1:8123}).

The broker serves the topics C{test} (2 partitions), C{meta-test} and
C{orders}, and accepts any other.  A block that needs a setting of its own
(certificates, several brokers) and is run by another test starts with the
line C{# Run by tests/<module>.py}; this module only checks that the named
test exists and reads the page.  The program must exit with status 0 and
print no traceback.  A block whose program runs until Ctrl-C says so in a
line C{# Runs until Ctrl-C}: once it has printed a line the test interrupts
it (SIGINT), and checks that it exits cleanly and that no consumer is left
registered in ZooKeeper.
"""

import os
import re
import sys
from pathlib import Path

from kazoo.client import KazooClient
from twisted.internet import defer, endpoints, protocol, reactor, threads
from twisted.trial.unittest import TestCase

from metamorphosis.broker.config import MetaConfig, TopicConfig, ZookeeperConfig
from metamorphosis.broker.service import BrokerService, zookeeperService
from tests.waiting import waitFor
from tests.zookeeper import uniqueRoot, zookeeperAddress

DOCS = Path(__file__).resolve().parents[1] / "docs"
UNTIL_INTERRUPTED = "# Runs until Ctrl-C"
DELEGATED = re.compile(r"\A# Run by (tests/\S+\.py)\n")
#: Seconds an example may take.
DEADLINE = 120


def examples():
    """
    Every C{```python} block of the documentation, as C{(page, number, code)}.
    """
    for page in sorted(DOCS.glob("*.md")):
        blocks = re.findall(r"^```python\n(.*?)^```", page.read_text(encoding="utf-8"), re.S | re.M)
        for number, code in enumerate(blocks, 1):
            yield page.stem, number, code


class ExampleProcess(protocol.ProcessProtocol):
    """
    The output of one example's process, and its end.
    """

    def __init__(self):
        self.out = b""
        self.err = b""
        self.ended = defer.Deferred()

    def outReceived(self, data):
        self.out += data

    def errReceived(self, data):
        self.err += data

    def processEnded(self, reason):
        self.ended.callback(reason.value.exitCode)


class DocumentationExamples(TestCase):
    """
    The examples of C{docs/*.md}; the tests are made from the pages below.
    """

    timeout = DEADLINE + 60

    def test_delegated(self):
        """
        Each block left to another test names a test module that exists and
        reads the block's page.
        """
        root = DOCS.parent
        for page, number, code in examples():
            match = DELEGATED.match(code)
            if match:
                module = root / match.group(1)
                self.assertTrue(module.exists(), (page, number, module))
                self.assertIn("%s.md" % (page,), module.read_text(encoding="utf-8"), (page, number))

    async def startBroker(self, zookeeper):
        data = os.path.abspath(self.mktemp())
        config = MetaConfig(dataPath=data, hostName="127.0.0.1", unflushThreshold=0, stat=True,
                            updateConsumerOffsets=True, acceptAnyTopic=True,
                            zookeeper=ZookeeperConfig(zkConnect=zookeeper, zkSyncTimeMs=0,
                                                      zkSessionTimeoutMs=10000))
        config.topics = {name: TopicConfig(name, numPartitions=partitions, dataPath=data, unflushThreshold=0)
                         for name, partitions in (("test", 2), ("meta-test", 1), ("orders", 1))}
        broker = BrokerService(config, endpoints.TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1"),
                               reactor, zookeeper=zookeeperService(config))
        broker.startService()
        self.addCleanup(broker.stopService)
        port = await broker.started
        return port.getHost().port

    async def chroot(self):
        """
        A fresh ZooKeeper chroot, as a connect string, and a client on it.
        """
        root = uniqueRoot("metaq-docs")
        client = KazooClient(zookeeperAddress())
        await threads.deferToThread(client.start, 30)
        self.addCleanup(lambda: threads.deferToThread(lambda: (client.stop(), client.close())))
        await threads.deferToThread(client.ensure_path, root)
        return zookeeperAddress() + root, client, root

    async def runExample(self, code):
        zookeeper, client, root = await self.chroot()
        port = await self.startBroker(zookeeper)

        def registered():
            published = root + "/meta/brokers/topics-pub/"
            return all(client.exists(published + topic) and client.get_children(published + topic)
                       for topic in ("test", "meta-test", "orders"))
        # As a user's broker would be: registered before the program starts.
        await waitFor(lambda: threads.deferToThread(registered), timeout=60)
        work = Path(os.path.abspath(self.mktemp()))
        (work / "home").mkdir(parents=True)
        script = work / "example.py"
        script.write_text(code, encoding="utf-8")
        env = dict(os.environ, HOME=str(work / "home"), METAQ_ZOOKEEPER=zookeeper,
                   METAQ_BROKER="meta://127.0.0.1:%d" % (port,), PYTHONUNBUFFERED="1")
        process = ExampleProcess()
        transport = reactor.spawnProcess(process, sys.executable, [sys.executable, str(script)],
                                         env=env, path=str(work))
        timer = reactor.callLater(DEADLINE, lambda: process.ended.called or transport.signalProcess("KILL"))
        if UNTIL_INTERRUPTED in code:
            await waitFor(lambda: b"\n" in process.out or process.ended.called, timeout=DEADLINE)
            if not process.ended.called:
                transport.signalProcess("INT")
        status = await process.ended
        if timer.active():
            timer.cancel()
        report = "exit status %s\n--- stdout:\n%s\n--- stderr:\n%s" % (
            status, process.out.decode(errors="replace"), process.err.decode(errors="replace"))
        self.assertEqual(status, 0, report)
        self.assertNotIn(b"Traceback", process.err, report)
        if UNTIL_INTERRUPTED in code:
            consumers = root + "/meta/consumers"

            def registered():
                if not client.exists(consumers):
                    return []
                return [(group, member) for group in client.get_children(consumers)
                        if client.exists("%s/%s/ids" % (consumers, group))
                        for member in client.get_children("%s/%s/ids" % (consumers, group))]
            self.assertEqual(await threads.deferToThread(registered), [], report)


def _exampleTest(code):
    def test(self):
        return defer.ensureDeferred(self.runExample(code))
    return test


for _page, _number, _code in examples():
    if DELEGATED.match(_code):
        continue
    _name = "test_%s_%d" % (re.sub(r"\W", "_", _page), _number)
    _test = _exampleTest(_code)
    _test.__name__ = _name
    _test.__doc__ = "Example %d of docs/%s.md." % (_number, _page)
    setattr(DocumentationExamples, _name, _test)

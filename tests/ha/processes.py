"""
Real broker processes for the replication tests: C{twistd -n metaq} started
from a C{server.ini} and a plugin properties file in a folder of its own,
stopped with SIGKILL when a test wants a crash, restarted on the same data;
and a TCP proxy the test can cut.
"""

import os
import signal as signals

from twisted.internet import defer, error, reactor
from twisted.internet.task import deferLater
from twisted.protocols.portforward import ProxyClientFactory, ProxyFactory, ProxyServer
from twisted.python import log

from tests.broker.client import connect
from tests.broker.store.helpers import withoutTail
from tests.integration.brokerprocess import TWISTD, BrokerProcess


def serverIni(brokerId, topics=(("meta-test", 1),), zkConnect=None, zkRoot="/meta", unflushThreshold=0,
              zkSessionTimeoutMs=4000, maxSegmentSize=1073741824):
    """
    The text of a C{server.ini}: host 127.0.0.1, data in C{data/} of the
    working directory, group commit (so that a reply means fsynced and
    visible), short ZooKeeper timeouts unless told otherwise.
    """
    lines = [
        "[system]",
        "brokerId=%d" % (brokerId,),
        "hostName=127.0.0.1",
        "dataPath=data",
        "unflushThreshold=%d" % (unflushThreshold,),
        "maxSegmentSize=%d" % (maxSegmentSize,),
        "[zookeeper]",
        "zk.zkEnable=%s" % ("true" if zkConnect else "false",),
        "zk.zkConnect=%s" % (zkConnect or "",),
        "zk.zkRoot=%s" % (zkRoot,),
        "zk.zkSessionTimeoutMs=%d" % (zkSessionTimeoutMs,),
        "zk.zkConnectionTimeoutMs=4000",
        "zk.zkSyncTimeMs=0",
    ]
    for topic, partitions in topics:
        lines += ["[topic=%s]" % (topic,), "numPartitions=%d" % (partitions,)]
    return "\n".join(lines) + "\n"


class Broker:
    """
    One broker process and its folder (C{server.ini}, the plugin file,
    C{data/}), which outlives restarts.
    """

    def __init__(self, testCase, name, ini, plugin=None, properties="", arguments=()):
        """
        @param arguments: more C{twistd metaq} options (e.g. C{--listen}).
        """
        self.testCase = testCase
        self.arguments = list(arguments)
        self.folder = os.path.abspath(testCase.mktemp())
        os.makedirs(self.folder)
        self.name = name
        self.ini = os.path.join(self.folder, "server.ini")
        with open(self.ini, "w") as f:
            f.write(ini)
        if plugin is not None:
            with open(os.path.join(self.folder, plugin), "w") as f:
                f.write(properties)
        self.port = 0
        self.process = None
        self.transport = None
        testCase.addCleanup(self.kill)
        testCase.addCleanup(self._logOutput)

    def _logOutput(self):
        # The broker's log, in the test log, to explain a failure.
        if self.process is not None:
            log.msg("--- output of the %s broker ---\n%s" % (self.name, self.output))

    @property
    def output(self):
        return self.process.output.decode("utf-8", "replace") if self.process else ""

    @defer.inlineCallbacks
    def start(self, port=None):
        """
        Start (or restart, on the same data and by default the same port).

        @return: a Deferred firing with the port once it listens.
        """
        if port is not None:
            self.port = port
        self.process = BrokerProcess()
        self.transport = reactor.spawnProcess(
            self.process,
            TWISTD,
            [TWISTD, "--nodaemon", "--pidfile=", "metaq", "--config", self.ini, "--port", "tcp:%d:interface=127.0.0.1" % (self.port,)] + self.arguments,
            env=os.environ.copy(),
            path=self.folder,
        )
        self.port = yield self.process.listening
        return self.port

    def kill(self, signal="KILL"):
        """
        Send C{signal} (SIGKILL by default: a crash; C{HUP} makes the broker
        reload its topics and keep running; C{STOP} freezes it as a host
        that died without closing its connections, C{CONT} resumes it).

        @return: a Deferred firing when the process is gone (at once for
            the signals that leave it running).
        """
        if self.transport is None:
            return defer.succeed(None)
        try:
            # By number: Twisted knows only some signals by name.
            self.transport.signalProcess(getattr(signals, "SIG" + signal))
        except error.ProcessExitedAlready:
            pass
        if signal in ("HUP", "STOP", "CONT"):
            return defer.succeed(None)
        ended = self.process.ended
        ended.addErrback(lambda f: None)
        self.transport = None
        return ended

    def stop(self):
        return self.kill("TERM")

    def partitionDir(self, topic, partition):
        return os.path.join(self.folder, "data", "%s-%d" % (topic, partition))

    def segmentFiles(self, topic, partition):
        """
        Segment file name to content, the last file without the zeros the
        running broker keeps after its records.
        """
        directory = self.partitionDir(topic, partition)
        if not os.path.isdir(directory):
            return {}
        contents = {}
        for name in sorted(os.listdir(directory)):
            if name.endswith(".meta"):
                with open(os.path.join(directory, name), "rb") as f:
                    contents[name] = f.read()
        if contents:
            last = max(contents)
            contents[last] = withoutTail(contents[last])
        return contents

    def connect(self):
        return connect(reactor, self.port)


class _CutProxyServer(ProxyServer):
    clientProtocolFactory = ProxyClientFactory

    def dataReceived(self, data):
        self.factory.forwarded += len(data)
        ProxyServer.dataReceived(self, data)

    def connectionMade(self):
        self.factory.servers.append(self)
        ProxyServer.connectionMade(self)
        if self.factory.stalled:
            self.transport.pauseProducing()

    def connectionLost(self, reason):
        if self in self.factory.servers:
            self.factory.servers.remove(self)
        ProxyServer.connectionLost(self, reason)


class CuttableProxy(ProxyFactory):
    """
    A TCP proxy on C{127.0.0.1:address} to C{127.0.0.1:port} whose link can be cut (established
    connections are aborted and new ones refused) or stalled (connections
    stay up but nothing is forwarded to the target) until L{heal}.

    @ivar forwarded: the bytes received from clients, to be forwarded.
    """

    protocol = _CutProxyServer

    def __init__(self, port):
        ProxyFactory.__init__(self, "127.0.0.1", port)
        self.cut = False
        self.stalled = False
        self.servers = []
        self.forwarded = 0
        self.listening = reactor.listenTCP(0, self, interface="127.0.0.1")
        self.address = self.listening.getHost().port

    def cutLink(self):
        """
        Refuse new connections and reset the established ones.
        """
        if not self.cut:
            self.cut = True
            self.listening.stopListening()
        for server in list(self.servers):
            server.transport.abortConnection()

    def stall(self):
        self.stalled = True
        for server in self.servers:
            server.transport.pauseProducing()

    def heal(self):
        if self.cut:
            self.cut = False
            self.listening = reactor.listenTCP(self.address, self, interface="127.0.0.1")
        if self.stalled:
            self.stalled = False
            for server in self.servers:
                server.transport.resumeProducing()

    def stop(self):
        self.cutLink()


def sleep(seconds):
    return deferLater(reactor, seconds, lambda: None)

"""
Tests for L{metamorphosis.zk}.
"""

import threading

from kazoo.exceptions import NoNodeError
from kazoo.handlers.threading import KazooTimeoutError
from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.protocol import Factory
from twisted.trial.unittest import TestCase

from metamorphosis import zk
from metamorphosis.broker.config import ZookeeperConfig
from tests.zookeeper import uniqueRoot, zookeeperAddress


class PathsTests(TestCase):
    """
    L{zk.normalizeRoot} and L{zk.ZkPaths} give Java C{MetaZookeeper}'s paths.
    """

    def test_normalizeRoot(self):
        self.assertEqual(zk.normalizeRoot("/meta"), "/meta")
        self.assertEqual(zk.normalizeRoot("meta/"), "/meta")
        self.assertEqual(zk.normalizeRoot("/a/b/"), "/a/b")

    def test_brokerPaths(self):
        paths = zk.ZkPaths("meta/")
        self.assertEqual(paths.brokerIdPath(3), "/meta/brokers/ids/3")
        self.assertEqual(paths.brokerIdsPathOf(3), "/meta/brokers/ids/3/master")
        self.assertEqual(paths.brokerIdsPathOf(3, 1), "/meta/brokers/ids/3/slave1")
        self.assertEqual(
            paths.masterConfigChecksumPath(3),
            "/meta/brokers/ids/3/master_config_checksum",
        )
        self.assertEqual(paths.consumersPath, "/meta/consumers")

    def test_topicPaths(self):
        paths = zk.ZkPaths("/x")
        self.assertEqual(paths.brokerTopicsPathOf("t", 0), "/x/brokers/topics/t/0-m")
        self.assertEqual(
            paths.brokerTopicsPubPathOf("t", 2, 0), "/x/brokers/topics-pub/t/2-s0"
        )
        self.assertEqual(
            paths.brokerTopicsSubPathOf("t", 2), "/x/brokers/topics-sub/t/2-m"
        )


class ClientTests(TestCase):
    """
    L{zk.connect}, L{zk.deferKazoo}, L{zk.ensurePath} and L{zk.disconnect}
    against a real ZooKeeper.
    """

    timeout = 30

    def config(self, zkConnect=None):
        return ZookeeperConfig(
            zkConnect=zkConnect or zookeeperAddress(),
            zkSessionTimeoutMs=4000,
            zkConnectionTimeoutMs=1000,
        )

    @inlineCallbacks
    def test_ensurePathAndResultsOnReactorThread(self):
        """
        L{zk.ensurePath} creates the path and its ancestors without data;
        the results of kazoo calls arrive on the reactor thread.
        """
        client = yield zk.connect(self.config())
        self.addCleanup(zk.disconnect, client)
        root = uniqueRoot()
        self.addCleanup(client.delete, root, recursive=True)
        yield zk.ensurePath(client, root + "/a/b")
        yield zk.ensurePath(client, root + "/a/b")
        threads = []

        def got(result):
            threads.append(threading.current_thread())
            return result

        data, stat = yield zk.deferKazoo(client.get_async(root + "/a")).addCallback(got)
        self.assertIsNone(data)
        self.assertEqual(stat.numChildren, 1)
        self.assertEqual(threads, [threading.main_thread()])
        data, _ = yield zk.deferKazoo(client.get_async(root + "/a/b"))
        self.assertIsNone(data)

    @inlineCallbacks
    def test_deferKazooFailure(self):
        """
        A failed kazoo call fails the Deferred with kazoo's exception.
        """
        client = yield zk.connect(self.config())
        self.addCleanup(zk.disconnect, client)
        yield self.assertFailure(
            zk.deferKazoo(client.get_async(uniqueRoot())), NoNodeError
        )

    @inlineCallbacks
    def test_connectTimeout(self):
        """
        L{zk.connect} gives up after C{zkConnectionTimeoutMs} when nothing
        answers.
        """
        listening = reactor.listenTCP(
            0, Factory.forProtocol(lambda: None), interface="127.0.0.1"
        )
        port = listening.getHost().port
        yield listening.stopListening()
        yield self.assertFailure(
            zk.connect(self.config("127.0.0.1:%d" % (port,))), KazooTimeoutError
        )

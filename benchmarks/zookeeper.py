"""
How long the broker's ZooKeeper registration takes, and whether the reactor
stays responsive meanwhile (issue 4, ZooKeeper).

For T topics (T = 10, 100, 1000 by default) it registers a broker
(L{BrokerZooKeeper}) under a fresh root and prints:

* the time from the address being known to the last topic's nodes existing;
* the same after a forced session expiry (ZooKeeper drops every ephemeral
  node; the broker registers everything again in a new session);
* the reactor's worst lateness meanwhile, measured by a 10 ms timer: the
  reactor never waits on ZooKeeper, so this stays in the milliseconds.

It uses the ZooKeeper at C{--zookeeper} or C{$METAQ_TEST_ZK}, e.g.:

    export METAQ_TEST_ZK=$(bash scripts/zookeeper.sh start /tmp/zk-bench)
    .venv/bin/python benchmarks/zookeeper.py
    .venv/bin/python benchmarks/zookeeper.py --topics 10 100 1000 5000
    bash scripts/zookeeper.sh stop /tmp/zk-bench
"""

import argparse
import os
import sys
import time
import uuid

from kazoo.client import KazooClient
from twisted.internet import defer, task
from twisted.internet.threads import deferToThread

from metamorphosis.broker.config import MetaConfig, TopicConfig, ZookeeperConfig
from metamorphosis.broker.zookeeper import BrokerZooKeeper


class LagMeter:
    """
    The worst delay of a 10 ms timer: how long the reactor was kept from
    running it.
    """

    interval = 0.01

    def __init__(self, reactor):
        self.reactor = reactor
        self.worst = 0.0
        self._last = None
        self._loop = task.LoopingCall(self._tick)
        self._loop.clock = reactor

    def _tick(self):
        now = time.monotonic()
        if self._last is not None:
            self.worst = max(self.worst, now - self._last - self.interval)
        self._last = now

    def start(self):
        self.worst, self._last = 0.0, None
        self._loop.start(self.interval)

    def stop(self):
        self._loop.stop()
        return self.worst


def waitForOwner(observer, path, notOwner=None, timeout=600):
    """
    Block until C{path} exists and is owned by a session other than
    C{notOwner}.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        stat = observer.exists(path)
        if stat is not None and stat.ephemeralOwner != notOwner:
            return stat.ephemeralOwner
        time.sleep(0.005)
    raise RuntimeError("%s did not appear within %d s" % (path, timeout))


def expire(address, clientId):
    intruder = KazooClient(hosts=address, client_id=clientId)
    intruder.start()
    intruder.stop()
    intruder.close()


@defer.inlineCallbacks
def measure(reactor, address, topics, observer):
    root = "/metaq-bench-%s" % (uuid.uuid4().hex[:12],)
    config = MetaConfig(
        brokerId=0,
        hostName="127.0.0.1",
        zookeeper=ZookeeperConfig(zkConnect=address, zkRoot=root, zkSyncTimeMs=0),
    )
    for i in range(topics):
        name = "bench-%05d" % (i,)
        config.topics[name] = TopicConfig(topic=name, numPartitions=4)
    last = "%s/brokers/topics-sub/bench-%05d/0-m" % (root, topics - 1)
    broker = BrokerZooKeeper(config)
    broker.startService()
    meter = LagMeter(reactor)
    try:
        while not (broker.client and broker.client.connected):
            yield task.deferLater(reactor, 0.01, lambda: None)
        meter.start()
        started = time.monotonic()
        broker.setBrokerAddress(8123)
        owner = yield deferToThread(waitForOwner, observer, last)
        first = time.monotonic() - started
        firstLag = meter.stop()

        meter.start()
        started = time.monotonic()
        yield deferToThread(expire, address, broker.client.client_id)
        yield deferToThread(waitForOwner, observer, last, owner)
        again = time.monotonic() - started
        againLag = meter.stop()
    finally:
        yield broker.stopService()
        yield deferToThread(observer.delete, root, recursive=True)
    print(
        "%6d topics  register %8.3f s (%7.0f topics/s)  re-register after expiry "
        "%8.3f s  worst reactor lag %5.1f ms / %5.1f ms"
        % (topics, first, topics / first, again, firstLag * 1000, againLag * 1000)
    )


@defer.inlineCallbacks
def main(reactor, argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--zookeeper", default=os.environ.get("METAQ_TEST_ZK"))
    parser.add_argument("--topics", type=int, nargs="+", default=[10, 100, 1000])
    options = parser.parse_args(argv)
    if not options.zookeeper:
        parser.error("give --zookeeper HOST:PORT or set METAQ_TEST_ZK")
    observer = KazooClient(hosts=options.zookeeper)
    yield deferToThread(observer.start)
    try:
        for topics in options.topics:
            yield measure(reactor, options.zookeeper, topics, observer)
    finally:
        yield deferToThread(observer.stop)
        observer.close()


if __name__ == "__main__":
    task.react(main, [sys.argv[1:]])

"""
Broadcast cache invalidation with real servers: a broker process,
ZooKeeper, Redis at 127.0.0.1:6379, three broadcast consumers (three
nodes, each with its own group, offsets file and key prefix).  Each node
deletes every key invalidated; a node down for a while catches up when it
returns.
"""

import os
import uuid

from twisted.internet import defer
from twisted.trial.unittest import SkipTest, TestCase

from metamorphosis.client.consumer import ConsumerConfig
from metamorphosis.client.session import MetaClientConfig, MetaMessageSessionFactory
from metamorphosis.usecases.cache import CacheInvalidator, invalidation
from tests.tools.support import startBroker
from tests.waiting import waitFor
from tests.zookeeper import uniqueRoot, zookeeperAddress

NODES = ["node-a", "node-b", "node-c"]


async def redisConnection():
    try:
        import txredisapi
    except ImportError:
        raise SkipTest("txredisapi is not installed (scripts/setup.sh --test)")
    try:
        return await txredisapi.Connection("127.0.0.1", 6379, reconnect=False,
                                           connectTimeout=3)
    except Exception as e:
        raise SkipTest("no Redis at 127.0.0.1:6379: %s" % (e,))


class CacheInvalidationTests(TestCase):

    timeout = 180

    def test_everyNodeInvalidates(self):
        return defer.ensureDeferred(self.everyNode())

    async def everyNode(self):
        redis = await redisConnection()
        self.addCleanup(redis.disconnect)
        root = uniqueRoot()
        await startBroker(self, {"invalidate": 2}, zookeeperAddress(), root)
        session = MetaMessageSessionFactory(MetaClientConfig(zkConnect=zookeeperAddress(),
                                                             zkRoot=root))
        await session.start()
        self.addCleanup(session.close)
        producer = session.createProducer()
        await producer.publish("invalidate")
        test = "uc-cache-%s:" % (uuid.uuid4().hex[:8],)
        folder = os.path.abspath(self.mktemp())
        os.makedirs(folder)
        keys = ["user:%d" % (n,) for n in range(60)]
        for node in NODES:
            for key in keys:
                await redis.set(test + node + ":" + key, "cached")
        self.addCleanup(lambda: redis.delete([test + n + ":" + k for n in NODES for k in keys]))

        async def startNode(node):
            consumer = session.createBroadcastConsumer(
                ConsumerConfig("cache", commitOffsetPeriodInMills=200,
                                        maxDelayFetchTimeInMills=500,
                                        recoverPath=os.path.join(folder, "recover-" + node)),
                offsetsPath=os.path.join(folder, node + ".offsets"), host=node)
            consumer.subscribe("invalidate", 64 * 1024,
                               CacheInvalidator(redis, prefix=test + node + ":"))
            await consumer.completeSubscribe()
            return consumer

        async def remaining(node):
            found = await redis.mget([test + node + ":" + key for key in keys])
            return {key for key, value in zip(keys, found) if value is not None}

        def invalidated(node, expected):
            return lambda: defer.ensureDeferred(remaining(node)).addCallback(
                lambda left: left == set(keys) - expected)

        consumers = {node: await startNode(node) for node in NODES}
        sent = set()
        for n in range(0, 20, 2):
            batch = keys[n:n + 2]
            result = await producer.sendMessage(invalidation("invalidate", batch))
            self.assertTrue(result.success, result.errorMessage)
            sent.update(batch)
        for node in NODES:
            await waitFor(invalidated(node, sent), what="%s invalidated" % (node,))

        # node-c goes down; invalidations go on; it comes back and catches up.
        await consumers.pop("node-c").shutdown()
        for n in range(20, 40, 4):
            batch = keys[n:n + 4]
            self.assertTrue((await producer.sendMessage(invalidation("invalidate", batch))).success)
            sent.update(batch)
        for node in ("node-a", "node-b"):
            await waitFor(invalidated(node, sent), what="%s invalidated" % (node,))
        self.assertEqual(await remaining("node-c"), set(keys) - set(keys[:20]))
        consumers["node-c"] = await startNode("node-c")
        await waitFor(invalidated("node-c", sent), what="node-c caught up")
        for consumer in consumers.values():
            await consumer.shutdown()

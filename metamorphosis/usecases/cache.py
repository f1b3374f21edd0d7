"""
Broadcast cache invalidation: every node of an application keeps a cache
(here in Redis) and must drop the entries that changed, whichever node
changed them.  An invalidation is one message naming the keys::

    {"keys": ["user:42", "user:42:friends"]}

published to a topic that every node consumes with a I{broadcast}
consumer (C{factory.createBroadcastConsumer(config)}): each
node has its own group and its own offsets, so each receives every
message, and a node that was down starts where it stopped.

L{CacheInvalidator} is the listener: it deletes the keys (under an
optional prefix) and retries while Redis does not answer, so that no
invalidation is skipped; the consumer's offset moves past a message only
once its keys are deleted.
"""

import json

from twisted.internet import task
from twisted.logger import Logger

from metamorphosis.client.message import Message


def invalidation(topic, keys):
    """
    The message invalidating C{keys}.
    """
    return Message(topic, json.dumps({"keys": list(keys)}).encode("utf-8"))


class CacheInvalidator:
    """
    A listener deleting the keys of each invalidation message from Redis.

    @param redis: a C{txredisapi} connection (or anything whose
        C{delete(keys)} returns a Deferred).
    @param prefix: put in front of every key (one Redis for several
        nodes' caches, or a namespace).
    @param retryDelay: seconds between attempts while Redis fails.
    """

    log = Logger()

    def __init__(self, redis, prefix="", retryDelay=1.0, clock=None):
        if clock is None:
            from twisted.internet import reactor as clock
        self.redis = redis
        self.prefix = prefix
        self.retryDelay = retryDelay
        self.clock = clock
        self.deleted = 0

    async def receiveMessages(self, message):
        try:
            keys = [self.prefix + str(key) for key in json.loads(message.data)["keys"]]
        except (ValueError, KeyError, TypeError) as e:
            self.log.error("Ignoring message {id}: not an invalidation ({error})",
                           id=message.id, error=e)
            return
        if not keys:
            return
        failing = False
        while True:
            try:
                await self.redis.delete(keys)
            except Exception as e:
                if not failing:
                    failing = True
                    self.log.warn("Deleting keys from Redis failed ({error}); retrying every "
                                  "{delay} s", error=e, delay=self.retryDelay)
                await task.deferLater(self.clock, self.retryDelay, lambda: None)
                continue
            if failing:
                self.log.info("Deleting keys from Redis works again")
            self.deleted += len(keys)
            return

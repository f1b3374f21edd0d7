"""
A small in-memory stand-in for the store manager, for tests of the parts of
the broker above the store.
"""

from twisted.internet import defer


class FakeStore:
    def __init__(self, minOffset=0):
        self.minOffset = minOffset
        self.maxOffset = minOffset
        self.messageCount = 0
        self.sizeInBytes = 0

    def add(self, count, size):
        self.messageCount += count
        self.sizeInBytes += size
        self.maxOffset += size


class FakeStoreManager:
    def __init__(self):
        self._stores = {}

    def add(self, topic, partition, store=None):
        store = store or FakeStore()
        self._stores[(topic, partition)] = store
        return store

    def stores(self):
        return [(t, p, s) for (t, p), s in self._stores.items()]

    def getStore(self, topic, partition):
        return self._stores.get((topic, partition))

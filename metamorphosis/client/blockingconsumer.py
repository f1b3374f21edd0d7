"""
Deprecated: the blocking consumer and topic browser now come from the
blocking session factory, like producers
(L{metamorphosis.client.blocking.BlockingMessageSessionFactory.createConsumer},
C{createBroadcastConsumer}, C{createTopicBrowser}).  These names stay for
one release and warn.
"""

import warnings

from metamorphosis.client.blocking import (
    BlockingMessageConsumer,
    BlockingTopicBrowser,
    ThreadedListener,
)

__all__ = [
    "BlockingMessageConsumer",
    "BlockingTopicBrowser",
    "ThreadedListener",
    "createBlockingBroadcastConsumer",
    "createBlockingConsumer",
    "createBlockingTopicBrowser",
]


def _deprecated(old, new):
    warnings.warn("%s is deprecated: use %s" % (old, new), DeprecationWarning, stacklevel=3)


def createBlockingConsumer(factory, config, offsetStorage=None):
    """
    Deprecated: use C{factory.createConsumer(config)}.
    """
    _deprecated("createBlockingConsumer(factory, config)", "factory.createConsumer(config)")
    return factory.createConsumer(config, offsetStorage)


def createBlockingBroadcastConsumer(factory, config, offsetsPath=None):
    """
    Deprecated: use C{factory.createBroadcastConsumer(config)}.
    """
    _deprecated("createBlockingBroadcastConsumer(factory, config)", "factory.createBroadcastConsumer(config)")
    return factory.createBroadcastConsumer(config, offsetsPath)


def createBlockingTopicBrowser(factory, topic, maxSize=1024 * 1024, timeout=5.0):
    """
    Deprecated: use C{factory.createTopicBrowser(topic)}.
    """
    _deprecated("createBlockingTopicBrowser(factory, topic)", "factory.createTopicBrowser(topic)")
    return factory.createTopicBrowser(topic, maxSize, timeout)

"""
Waiting in tests for a condition rather than for a fixed time: a fixed
sleep is a guess about how fast the machine is, and a loaded CI machine
makes it wrong.
"""

from twisted.internet import defer, reactor
from twisted.internet.task import deferLater


@defer.inlineCallbacks
def waitFor(predicate, timeout=30.0, interval=0.05, what="condition"):
    """
    Poll C{predicate} (which may return a Deferred) until it is true.

    @param timeout: seconds of polling after which the wait fails; generous,
        since a wait that succeeds returns at once.
    @return: a Deferred firing with the predicate's true value.
    @raise AssertionError: C{timeout} passed.
    """
    waited = 0.0
    while True:
        value = yield defer.maybeDeferred(predicate)
        if value:
            return value
        if waited >= timeout:
            raise AssertionError("%s not met within %s s" % (what, timeout))
        yield deferLater(reactor, interval, lambda: None)
        waited += interval

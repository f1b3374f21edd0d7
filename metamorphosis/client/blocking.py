"""
A blocking API for scripts and for programs that do not run a reactor.

L{ReactorThread} runs the Twisted reactor in a background daemon thread (a
small equivalent of crochet); L{ReactorThread.call} runs a function there
and blocks the calling thread until its result (or its Deferred's result)
is in.  L{BlockingProxy} turns the methods of an object living in the
reactor thread into blocking ones; the blocking session factory and
producers below are such proxies, and a consumer can be wrapped the same
way::

    from metamorphosis.client.blocking import BlockingMessageSessionFactory
    from metamorphosis.client.message import Message
    from metamorphosis.client.session import MetaClientConfig

    with BlockingMessageSessionFactory(MetaClientConfig(zkConnect="127.0.0.1:2181")) as factory:
        producer = factory.createProducer()
        producer.publish("test")
        result = producer.send(Message("test", b"hello"))
"""

import atexit
import threading

from twisted.internet import defer
from twisted.python import threadable
from twisted.python.failure import Failure

from metamorphosis.client.producer import DEFAULT_SEND_TIMEOUT
from metamorphosis.client.session import MetaMessageSessionFactory


class ReactorThread:
    """
    The reactor, running in a daemon thread of its own.

    If the reactor is already running in another thread (a program that
    started it itself), that one is used.
    """

    def __init__(self, reactor=None):
        if reactor is None:
            from twisted.internet import reactor
        self.reactor = reactor
        self._thread = None
        self._lock = threading.Lock()

    def start(self):
        """
        Start the reactor thread if the reactor is not running yet.
        """
        if self._thread is not None and self._thread.is_alive():
            return
        with self._lock:
            if self.reactor.running or (self._thread is not None and self._thread.is_alive()):
                return
            started = threading.Event()
            self.reactor.callWhenRunning(started.set)
            self._thread = threading.Thread(
                target=self.reactor.run,
                kwargs={"installSignalHandlers": False},
                name="metaq-reactor",
                daemon=True,
            )
            self._thread.start()
            atexit.register(self.stop)
            if not started.wait(30):
                raise RuntimeError("The reactor did not start")

    def inReactorThread(self):
        """
        Whether the caller is the reactor's own thread.
        """
        if self._thread is not None:
            return threading.current_thread() is self._thread
        return self.reactor.running and threadable.isInIOThread()

    def call(self, function, *args, timeout=None, **kwargs):
        """
        Run C{function(*args, **kwargs)} in the reactor thread and wait for
        its result; a Deferred result is waited for too.

        @param timeout: seconds to wait at most (L{None}: the operation's own
            timeouts bound it).
        @raise TimeoutError: C{timeout} passed (the operation is cancelled).
        @raise Exception: whatever the function raised or its Deferred
            failed with.
        """
        if self.inReactorThread():
            raise RuntimeError("A blocking call from the reactor thread would deadlock")
        self.start()
        # A plain lock, released by the reactor thread with the outcome in
        # place: cheaper than a Future's condition variable, and this is
        # paid on every blocking send.
        finished = threading.Lock()
        finished.acquire()
        outcome = []
        running = []

        def done(result):
            outcome.append(result)
            finished.release()

        def run():
            d = defer.maybeDeferred(function, *args, **kwargs)
            running.append(d)
            d.addBoth(done)

        self.reactor.callFromThread(run)
        if not finished.acquire(timeout=-1 if timeout is None else timeout):
            self.reactor.callFromThread(lambda: running and running[0].cancel())
            raise TimeoutError("No result within %s s" % (timeout,))
        result = outcome[0]
        if isinstance(result, Failure):
            result.raiseException()
        return result

    def callNoWait(self, function, *args, **kwargs):
        """
        Run C{function(*args, **kwargs)} in the reactor thread soon; do not
        wait for it.
        """
        self.start()
        self.reactor.callFromThread(function, *args, **kwargs)

    def stop(self):
        """
        Stop the reactor if this object started it, and wait for its thread.
        """
        thread = self._thread
        if thread is None or not thread.is_alive():
            return
        self.reactor.callFromThread(self.reactor.stop)
        thread.join(30)


_default = None
_defaultLock = threading.Lock()


def reactorThread():
    """
    The process's shared L{ReactorThread} (started on first use).
    """
    global _default
    with _defaultLock:
        if _default is None:
            _default = ReactorThread()
        return _default


class BlockingProxy:
    """
    A blocking view of an object that lives in the reactor thread.
    """

    def __init__(self, wrapped, thread=None):
        self.wrapped = wrapped
        self.thread = thread if thread is not None else reactorThread()

    def _call(self, method, *args, **kwargs):
        return self.thread.call(getattr(self.wrapped, method), *args, **kwargs)


class BlockingProducer(BlockingProxy):
    """
    A blocking L{MessageProducer}.
    """

    def publish(self, topic):
        return self._call("publish", topic)

    def setDefaultTopic(self, topic):
        return self._call("setDefaultTopic", topic)

    def send(self, message, timeout=DEFAULT_SEND_TIMEOUT):
        """
        Send C{message}; return its L{SendResult}.

        @raise metamorphosis.client.errors.MetaClientError: as
            L{MessageProducer.sendMessage} fails.
        """
        return self._call("sendMessage", message, timeout)

    sendMessage = send

    def shutdown(self):
        return self._call("shutdown")


class BlockingAsyncProducer(BlockingProducer):
    """
    A blocking view of an L{AsyncMessageProducer}: L{sendAsync} does not
    wait at all.
    """

    def sendAsync(self, message, timeout=DEFAULT_SEND_TIMEOUT):
        """
        Hand C{message} to the reactor thread for fire-and-forget sending.
        """
        self.thread.callNoWait(self.wrapped.asyncSendMessage, message, timeout)

    asyncSendMessage = sendAsync

    def flush(self):
        """
        Wait until every message handed over so far has been answered.
        """
        # The hand-over queue is FIFO: flush after the last sendAsync.
        return self._call("flush")


class BlockingTransactionalProducer(BlockingProducer):
    """
    A blocking L{TransactionalMessageProducer} or L{XAMessageProducer}.
    """

    def beginTransaction(self):
        return self._call("beginTransaction")

    def setTransactionTimeout(self, seconds):
        return self._call("setTransactionTimeout", seconds)

    def commit(self):
        return self._call("commit")

    def rollback(self):
        return self._call("rollback")

    def getXAResource(self):
        return BlockingXAResource(self._call("getXAResource"), self.thread)


class BlockingXAResource(BlockingProxy):
    """
    A blocking L{MetaXAResource}, as a JTA transaction manager calls it.
    """

    def start(self, xid, flags=0):
        return self._call("start", xid, flags)

    def end(self, xid, flags=0):
        return self._call("end", xid, flags)

    def prepare(self, xid):
        return self._call("prepare", xid)

    def commit(self, xid, onePhase):
        return self._call("commit", xid, onePhase)

    def rollback(self, xid):
        return self._call("rollback", xid)

    def forget(self, xid):
        return self._call("forget", xid)

    def recover(self, flags=0):
        return self._call("recover", flags)

    def setTransactionTimeout(self, seconds):
        return self._call("setTransactionTimeout", seconds)

    def isSameRM(self, other):
        return self.wrapped.isSameRM(getattr(other, "wrapped", other))


class BlockingMessageSessionFactory(BlockingProxy):
    """
    A blocking L{MetaMessageSessionFactory}, started on construction.
    """

    def __init__(self, config, thread=None):
        thread = thread if thread is not None else reactorThread()
        factory = thread.call(lambda: MetaMessageSessionFactory(config, thread.reactor).start())
        super().__init__(factory, thread)

    def createProducer(self, selector=None):
        return BlockingTransactionalProducer(self._call("createProducer", selector), self.thread)

    def createXAProducer(self, selector=None, uniqueQualifier=None):
        return BlockingTransactionalProducer(
            self._call("createXAProducer", selector, uniqueQualifier), self.thread
        )

    def createOrderedProducer(self, selector=None, saveToLocalWhenFailed=False):
        return BlockingProducer(
            self._call("createOrderedProducer", selector, saveToLocalWhenFailed), self.thread
        )

    def createAsyncProducer(self, selector=None, slidingWindowSize=20000):
        return BlockingAsyncProducer(
            self._call("createAsyncProducer", selector, slidingWindowSize), self.thread
        )

    def getStats(self, url, item=None, timeout=3.0):
        return self._call("getStats", url, item, timeout)

    def close(self):
        return self._call("close")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

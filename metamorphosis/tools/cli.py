"""
What the command-line tools share: running a tool under C{react} with its
C{usage.Options}, turning the failures a user can act on into one line on
stderr and a non-zero exit status, and opening the one broker connection or
ZooKeeper session a tool needs.
"""

import sys

from twisted.internet.defer import ensureDeferred
from twisted.internet.endpoints import connectProtocol
from twisted.internet.task import react
from twisted.logger import (
    FilteringLogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    globalLogBeginner,
    textFileLogObserver,
)
from twisted.python import usage

from metamorphosis.client.connection import MetaClientProtocol, brokerEndpoint, parseBrokerUrl
from metamorphosis.client.session import MetaClientConfig
from metamorphosis.zk import connect

EXIT_FAILURE = 1
EXIT_USAGE = 2


class ToolError(Exception):
    """
    A failure the user can act on (a missing file, an unreachable broker,
    an unknown group): printed as one line, exit status 1.
    """


def brokerUrl(text):
    """
    Normalise C{host:port} or C{meta://host:port} to a C{meta://} URL.

    @raise usage.UsageError: neither.
    """
    url = text if "://" in text else "meta://" + text
    try:
        parseBrokerUrl(url)
    except ValueError as e:
        raise usage.UsageError(str(e))
    return url


async def openBroker(reactor, url, timeout):
    """
    One connection to the broker at C{url}, without reconnection: a tool
    that loses its broker reports it rather than waiting.

    @return: the connected L{MetaClientProtocol}.
    @raise ToolError: the connection could not be made within C{timeout}.
    """
    host, port = parseBrokerUrl(url)
    try:
        return await connectProtocol(
            brokerEndpoint(reactor, host, port, timeout), MetaClientProtocol(reactor)
        )
    except Exception as e:
        raise ToolError("cannot connect to the broker %s: %s" % (url, e))


async def openZooKeeper(reactor, address, timeout):
    """
    A started kazoo client for C{address}.

    @raise ToolError: no session within C{timeout} seconds.
    """
    config = MetaClientConfig(zkConnect=address, zkConnectionTimeoutMs=int(timeout * 1000))
    try:
        return await connect(config, reactor=reactor)
    except Exception as e:
        raise ToolError("cannot connect to ZooKeeper at %s: %s" % (address, e or type(e).__name__))


def logTo(stream, level):
    """
    Send the Twisted log at C{level} and above to C{stream}.
    """
    predicate = LogLevelFilterPredicate(defaultLogLevel=level)
    globalLogBeginner.beginLoggingTo(
        [FilteringLogObserver(textFileLogObserver(stream), [predicate])],
        redirectStandardIO=False,
    )


def runTool(name, options, main, argv=None, stderr=None, logLevel=LogLevel.error):
    """
    Parse C{argv} into C{options} and run C{main(reactor, options)} (a
    coroutine returning the exit status) under C{react}.  Exits 2 on a usage
    error and 1 on a L{ToolError} or any other failure, with one line on
    stderr and no traceback.
    """
    stderr = stderr or sys.stderr
    try:
        options.parseOptions(argv)
    except usage.UsageError as e:
        print("%s: %s" % (name, e), file=stderr)
        print("Try '%s --help'." % (name,), file=stderr)
        raise SystemExit(EXIT_USAGE)
    logTo(stderr, logLevel)

    def report(failure):
        if failure.check(SystemExit):
            return failure
        if failure.check(ToolError):
            print("%s: %s" % (name, failure.value), file=stderr)
        else:
            print("%s: unexpected error: %s: %s"
                  % (name, failure.type.__name__, failure.getErrorMessage()), file=stderr)
        raise SystemExit(EXIT_FAILURE)

    def exitWith(status):
        if status:
            raise SystemExit(status)

    def start(reactor):
        return ensureDeferred(main(reactor, options)).addCallbacks(exitWith, report)

    react(start)

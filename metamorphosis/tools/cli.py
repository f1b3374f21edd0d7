"""
What the command-line tools share: running a tool under C{react} with its
C{usage.Options}, the options every tool takes the same way (given before
the subcommand of C{metaq} or after it), turning the failures a user can
act on into one line on stderr and a non-zero exit status, and opening the
one broker connection or ZooKeeper session a tool needs.

Exit status of every tool: L{EXIT_OK} done, L{EXIT_FAILURE} a failure
explained in one line on stderr, L{EXIT_USAGE} bad usage.
"""

import os
import sys
import time

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
from metamorphosis.tls import ClientTLS
from metamorphosis.zk import connect

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2

#: The options C{metaq} takes before a subcommand and hands down to it: a
#: subcommand that has one of them and was not given it takes the value
#: given to C{metaq} (C{metaq -z zk:2181 offsets -g g} and
#: C{metaq offsets -z zk:2181 -g g} are the same).
SHARED = ("zookeeper", "zk-root", "broker", "timeout")


def inheritShared(options):
    """
    Fill the L{SHARED} options of a subcommand's C{options} that were left
    at their default from its parent's (C{metaq}'s) options.  Call it first
    in C{postOptions}.
    """
    parent = getattr(options, "parent", None)
    while parent is not None:
        for name in SHARED:
            given = parent.opts.get(name)
            if name in options.defaults and given is not None and (
                    options[name] == options.defaults[name]):
                options[name] = given
        parent = getattr(parent, "parent", None)


class Verbosity:
    """
    C{-v} (repeatable) and C{-q}, for a C{usage.Options}: mixed in by every
    tool.  C{-q} shows errors only and no progress; C{-v} shows the
    informational log, C{-vv} the debug log.
    """

    def opt_verbose(self):
        """
        Log more (repeat for debug output).
        """
        self.opts["verbose"] = self.opts.get("verbose", 0) + 1

    opt_v = opt_verbose

    def opt_quiet(self):
        """
        Errors only: no warnings, no progress.
        """
        self.opts["quiet"] = True

    opt_q = opt_quiet


class BrokerTLS:
    """
    C{--tls-ca}, C{--tls-cert}, C{--tls-key}, for a C{usage.Options} whose
    tool connects to a broker: connect to its TLS listener
    (docs/security.md). Given to C{metaq} or to the command.
    """

    optParameters = [
        ["tls-ca", None, None, "connect over TLS, trusting the CA certificates of this PEM file"],
        ["tls-cert", None, None, "with --tls-ca: this PEM client certificate (for mtls: listeners)"],
        ["tls-key", None, None, "the key of --tls-cert, if not in the same file"],
    ]


def clientTLS(options):
    """
    The L{ClientTLS} the C{--tls-*} options given to C{options} or any of
    its parents ask for, or L{None} for plain TCP.
    """
    given = {}
    while options is not None:
        for name in ("tls-ca", "tls-cert", "tls-key"):
            if options.opts.get(name) is not None:
                given.setdefault(name, options.opts[name])
        options = getattr(options, "parent", None)
    if "tls-ca" not in given and "tls-cert" not in given:
        return None
    return ClientTLS(caCerts=given.get("tls-ca"), certificate=given.get("tls-cert"),
                     privateKey=given.get("tls-key"))


def verbosity(options):
    """
    C{(verbose, quiet)} given to C{options} or any of its parents.
    """
    verbose, quiet = 0, False
    while options is not None:
        verbose += options.opts.get("verbose", 0)
        quiet = quiet or options.opts.get("quiet", False)
        options = getattr(options, "parent", None)
    return verbose, quiet


def logLevel(options, default=LogLevel.warn):
    """
    The lowest level logged for a tool run with C{options}.
    """
    verbose, quiet = verbosity(options)
    if quiet:
        return LogLevel.error
    if verbose >= 2:
        return LogLevel.debug
    if verbose == 1:
        return LogLevel.info
    return default


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


def checkBrokerSource(options):
    """
    Check that C{options} name exactly one of C{--zookeeper} and
    C{--broker}, and make the broker a C{meta://} URL.

    @raise usage.UsageError: neither or both, or a broker that is no address.
    """
    if bool(options["zookeeper"]) == bool(options["broker"]):
        raise usage.UsageError("give one of --zookeeper and --broker")
    if options["broker"]:
        options["broker"] = brokerUrl(options["broker"])


async def openBroker(reactor, url, timeout, tls=None):
    """
    One connection to the broker at C{url}, without reconnection: a tool
    that loses its broker reports it rather than waiting; over TLS with
    C{tls} (a L{ClientTLS}, see L{clientTLS}).

    @return: the connected L{MetaClientProtocol}.
    @raise ToolError: the connection could not be made within C{timeout}.
    """
    host, port = parseBrokerUrl(url)
    try:
        return await connectProtocol(
            brokerEndpoint(reactor, host, port, timeout, tls), MetaClientProtocol(reactor)
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


def outputClosed():
    """
    Stop quietly, as done, when stdout was closed by its reader
    (C{metaq consume ... | head}).
    """
    # Nothing more can be written; the interpreter's last flush must not
    # complain either.
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    raise SystemExit(EXIT_OK)


def runTool(name, options, main, argv=None, stderr=None, defaultLevel=LogLevel.warn):
    """
    Parse C{argv} into C{options} and run C{main(reactor, options)} (a
    coroutine returning the exit status) under C{react}.  Exits 2 on a usage
    error and 1 on a L{ToolError} or any other failure, with one line on
    stderr and no traceback.  The log goes to stderr from C{defaultLevel}
    on, or as C{-v}/C{-q} say.
    """
    stderr = stderr or sys.stderr
    try:
        options.parseOptions(argv)
    except BrokenPipeError:
        outputClosed()
    except usage.UsageError as e:
        command = " ".join(filter(None, [name, getattr(options, "subCommand", None)]))
        print("%s: %s" % (command, e), file=stderr)
        print("Try '%s --help'." % (command,), file=stderr)
        raise SystemExit(EXIT_USAGE)
    logTo(stderr, logLevel(options, defaultLevel))

    def report(failure):
        if failure.check(SystemExit):
            return failure
        if failure.check(BrokenPipeError):
            outputClosed()
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


def runAlias(name, command, options, main, argv=None, **kwargs):
    """
    Run a tool under its old name (C{metaq-stats} for C{metaq stats}),
    kept for one release: the same tool, with a deprecation note on a
    terminal.
    """
    options.synopsis = "Usage: %s %s" % (name, options.synopsis)
    if sys.stderr.isatty():
        print("%s is deprecated: use 'metaq %s'" % (name, command), file=sys.stderr)
    runTool(name, options, main, argv, **kwargs)


class Progress:
    """
    A count and its rate on one line of a terminal, redrawn at most every
    C{interval} seconds: for long operations.  Silent when C{stream} is not
    a terminal (piped, in a script) or with C{-q}.
    """

    def __init__(self, what, stream=None, options=None, clock=time.monotonic, interval=0.5):
        self.what = what
        self.stream = stream or sys.stderr
        quiet = options is not None and verbosity(options)[1]
        self.shown = not quiet and self.stream.isatty()
        self.clock = clock
        self.interval = interval
        self.count = 0
        self.started = clock()
        self._drawn = None
        self._width = 0

    def add(self, count=1):
        self.count += count
        if self.shown:
            now = self.clock()
            if self._drawn is None or now - self._drawn >= self.interval:
                self._drawn = now
                self._draw(now, "")

    def _draw(self, now, end):
        seconds = now - self.started
        line = "%d %s" % (self.count, self.what)
        if seconds >= self.interval:
            # No rate from a blink: it would mean nothing.
            line += ", %.0f/s" % (self.count / seconds,)
        self.stream.write("\r" + line.ljust(self._width) + end)
        self._width = len(line)
        self.stream.flush()

    def done(self):
        """
        The final count, on its own line.
        """
        if self.shown:
            self._draw(self.clock(), "\n")


def table(out, header, rows):
    """
    Print C{rows} (tuples of text) under C{header} in aligned columns, the
    last one unpadded.
    """
    rows = [header] + list(rows)
    widths = [max(len(row[i]) for row in rows) for i in range(len(header) - 1)]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths))
              + ("  " if len(header) > 1 else "") + row[-1], file=out)

"""
Print a broker's C{stats [item]} reply (docs/stats.md), once or every few
seconds with the per-second rates of its C{cmd_*} counters: telnet's
C{stats} for scripts.

    python -m metamorphosis.tools.stats --broker 127.0.0.1:8123 [item]
    python -m metamorphosis.tools.stats --broker 127.0.0.1:8123 --watch 5
"""

import sys
import time

from twisted.internet.task import deferLater
from twisted.python import usage

from metamorphosis.client.errors import MetaClientError
from metamorphosis.protocol.status import OK
from metamorphosis.tools.cli import (
    BrokerTLS,
    ToolError,
    Verbosity,
    brokerUrl,
    clientTLS,
    inheritShared,
    openBroker,
    runAlias,
)


class Options(Verbosity, BrokerTLS, usage.Options):
    synopsis = "[options] [item]"
    longdesc = ("Query 'stats [item]' of a broker (items: topics, offsets, realtime, "
                "config, reset, help, or a topic name) and print the reply.")
    optParameters = [
        ["broker", "b", "127.0.0.1:8123", "the broker, host:port or meta://host:port"],
        ["watch", "w", None, "repeat every SECONDS, with the rates of the cmd_* counters",
         float],
        ["count", "n", None, "with --watch: stop after N replies", int],
        ["timeout", "t", 5.0, "seconds to wait for the connection and each reply", float],
    ]

    def parseArgs(self, item=None):
        self["item"] = item

    def postOptions(self):
        inheritShared(self)
        self["broker"] = brokerUrl(self["broker"])
        if self["watch"] is not None and self["watch"] <= 0:
            raise usage.UsageError("--watch needs a positive number of seconds")
        if self["count"] is not None and self["count"] < 1:
            raise usage.UsageError("--count needs a positive number")


def parseStats(body):
    """
    The counters of a C{stats} reply: each line split at its first space
    into a name and an integer value (lines whose value is not an integer
    are left out).
    """
    counters = {}
    for line in body.splitlines():
        name, _, value = line.partition(" ")
        try:
            counters[name] = int(value)
        except ValueError:
            pass
    return counters


def rates(before, after, seconds):
    """
    Per-second rates of the C{cmd_*} counters between two replies.

    @return: a list of C{(name, rate)} in the order of C{after}.
    """
    return [(name, (value - before[name]) / seconds)
            for name, value in after.items()
            if name.startswith("cmd_") and name in before]


async def main(reactor, options, out=None):
    out = out or sys.stdout
    broker = await openBroker(reactor, options["broker"], options["timeout"],
                              clientTLS(options))
    try:
        previous = None
        rounds = 0
        while True:
            try:
                reply = await broker.stats(options["item"], timeout=options["timeout"])
            except MetaClientError as e:
                raise ToolError("%s: %s" % (options["broker"], e))
            now = reactor.seconds()
            body = reply.body.decode("utf-8", "replace")
            if reply.code != OK:
                raise ToolError("%s answered %s: %s" % (options["broker"], reply.code, body))
            if options["watch"] is not None:
                print("--- %s %s" % (options["broker"], time.strftime("%Y-%m-%d %H:%M:%S")),
                      file=out)
            print(body.rstrip("\r\n").replace("\r\n", "\n"), file=out)
            counters = parseStats(body)
            if previous is not None:
                for name, rate in rates(previous[1], counters, now - previous[0]):
                    print("%s/s %.1f" % (name, rate), file=out)
            out.flush()
            rounds += 1
            if options["watch"] is None or rounds == options["count"]:
                return 0
            previous = (now, counters)
            await deferLater(reactor, options["watch"], lambda: None)
    finally:
        broker.transport.loseConnection()


def run(argv=None):
    runAlias("metaq-stats", "stats", Options(), main, argv)


if __name__ == "__main__":
    run()

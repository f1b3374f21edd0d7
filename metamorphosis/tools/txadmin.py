"""
Complete prepared XA transactions of a running broker by hand (heuristic
completion), list them, or forget a heuristic outcome.

    python -m metamorphosis.tools.txadmin --config server.ini list
    python -m metamorphosis.tools.txadmin --data-path DIR commit KEY [--one-phase]
    python -m metamorphosis.tools.txadmin --data-path DIR rollback|complete|forget KEY

It talks to the broker through the admin socket in the transaction journal
directory (docs/transactions.md).  Exit status, as the other tools: 0 done,
1 a failure explained on stderr (no such prepared transaction, broker not
reachable), 2 bad usage.
"""

import os
import sys

from twisted.internet.endpoints import UNIXClientEndpoint, connectProtocol
from twisted.protocols import amp
from twisted.python import usage

from metamorphosis.broker.config import ConfigError, loadConfig
from metamorphosis.broker.transactions.admin import (
    SOCKET_NAME,
    CommitTransaction,
    CompleteTransaction,
    ForgetTransaction,
    ListTransactions,
    RollbackTransaction,
    adminSocketPath,
)
from metamorphosis.tools.cli import ToolError, Verbosity, runAlias

_COMMANDS = {
    "commit": CommitTransaction,
    "rollback": RollbackTransaction,
    "complete": CompleteTransaction,
    "forget": ForgetTransaction,
}


class ListOptions(usage.Options):
    synopsis = ""


class KeyOptions(usage.Options):
    synopsis = "KEY"

    def parseArgs(self, key):
        self["key"] = key


class CommitOptions(KeyOptions):
    synopsis = "[--one-phase] KEY"
    optFlags = [["one-phase", None, "commit in one phase (the transaction was not prepared)"]]

    def parseArgs(self, key, *rest):
        # "commit KEY --one-phase", the order the tool always took.
        if rest not in ((), ("--one-phase",)):
            raise usage.UsageError("unexpected arguments: %s" % (" ".join(rest),))
        if rest:
            self["one-phase"] = True
        KeyOptions.parseArgs(self, key)


class Options(Verbosity, usage.Options):
    synopsis = "(--config server.ini | --data-path DIR) COMMAND [KEY]"
    longdesc = "Heuristic completion of prepared XA transactions."
    optParameters = [
        ["config", "c", None, "the broker's server.ini"],
        ["data-path", "d", None, "the broker's dataLogPath (or dataPath)"],
    ]
    subCommands = [["list", None, ListOptions, "prepared and heuristically completed transactions"]] + [
        [name, None, CommitOptions if name == "commit" else KeyOptions,
         command.__doc__.strip().splitlines()[0]]
        for name, command in _COMMANDS.items()
    ]

    def postOptions(self):
        if bool(self["config"]) == bool(self["data-path"]):
            raise usage.UsageError("give one of --config and --data-path")
        if self.subCommand is None:
            raise usage.UsageError("a command is required: list, " + ", ".join(_COMMANDS))


def socketPath(options):
    if options["config"]:
        try:
            return adminSocketPath(loadConfig(options["config"]))
        except ConfigError as e:
            raise ToolError("bad configuration: %s" % (e,))
    return os.path.join(options["data-path"], "transactions", SOCKET_NAME)


async def main(reactor, options, out=None):
    out = out or sys.stdout
    try:
        client = await connectProtocol(
            UNIXClientEndpoint(reactor, socketPath(options)), amp.AMP()
        )
    except ToolError:
        raise
    except Exception as e:
        raise ToolError("cannot reach the broker: %s" % (e,))
    command, key = options.subCommand, options.subOptions.get("key")
    try:
        if command == "list":
            answer = await client.callRemote(ListTransactions)
            for key in answer["prepared"]:
                print("%s PREPARED" % (key,), file=out)
            for line in answer["heuristic"]:
                print(line, file=out)
            return 0
        arguments = {"key": key}
        if command == "commit":
            arguments["onePhase"] = bool(options.subOptions["one-phase"])
        answer = await client.callRemote(_COMMANDS[command], **arguments)
        if not answer["done"]:
            raise ToolError("no such transaction: %s" % (key,))
        print("%s: %s" % (command, key), file=out)
        return 0
    finally:
        client.transport.loseConnection()


def run(argv=None):
    runAlias("metaq-txadmin", "txadmin", Options(), main, argv)


if __name__ == "__main__":
    run()

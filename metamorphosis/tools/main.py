"""
C{metaq}: every operations tool as one command with subcommands, as
C{twistd} has plugins.

    metaq [--zookeeper HOST:PORT] [--zk-root /meta] [--broker HOST:PORT]
          [--timeout S] [--tls-ca CA.pem [--tls-cert C.pem --tls-key K.pem]]
          [-v|-q] COMMAND [options]

The shared options may come before the command or after it (see
L{metamorphosis.tools.cli.SHARED}).  A tool is a module with an C{Options}
(a C{usage.Options}) and a coroutine C{main(reactor, options)} returning the
exit status; adding one is adding a line to L{COMMANDS}.  Modules are
imported only when their command runs, so C{metaq --help} stays fast.

Exit status: 0 done, 1 a failure explained in one line on stderr, 2 bad
usage.
"""

import importlib

from twisted.python import usage

import metamorphosis
from metamorphosis.tools.cli import BrokerTLS, Verbosity, runTool

#: name, module, what it does (the line C{metaq --help} shows).
COMMANDS = [
    ("stats", "metamorphosis.tools.stats", "a broker's stats, once or every few seconds"),
    ("topics", "metamorphosis.tools.topics", "list topics, or describe one: partitions, brokers, sizes"),
    ("groups", "metamorphosis.tools.groups", "list consumer groups, or describe one: owners and lag"),
    ("offsets", "metamorphosis.tools.offsets", "a group's committed offsets and lag; reset them"),
    ("produce", "metamorphosis.tools.produce", "send the lines of stdin to a topic"),
    ("consume", "metamorphosis.tools.consume", "print a topic's messages on stdout"),
    ("dump", "metamorphosis.tools.dump", "the records of segment files"),
    ("verify", "metamorphosis.tools.verify", "check a partition's files"),
    ("tail", "metamorphosis.tools.tail", "follow a log file into a topic"),
    ("binlog", "metamorphosis.tools.binlog", "publish a MySQL/MariaDB binlog's row changes, in order"),
    ("apply", "metamorphosis.tools.apply", "apply a change stream to PostgreSQL tables"),
    ("txadmin", "metamorphosis.tools.txadmin", "heuristic completion of prepared XA transactions"),
    ("failover", "metamorphosis.tools.failover", "show or change the failover record of a broker id"),
]


def _tool(module):
    return importlib.import_module(module)


def _subCommands():
    return [
        (name, None, lambda module=module: _tool(module).Options(), description)
        for name, module, description in COMMANDS
    ]


class Options(Verbosity, BrokerTLS, usage.Options):
    synopsis = "Usage: metaq [options] COMMAND [command options]"
    subCommand = None
    longdesc = ("Operations tools for MetaQ brokers. 'metaq COMMAND --help' describes a "
                "command. Exit status: 0 done, 1 failure (explained on stderr), 2 bad usage.")
    optParameters = [
        ["zookeeper", "z", None, "ZooKeeper host:port[,host:port...], for the commands using it"],
        ["zk-root", None, None, "MetaQ's root znode (zk.zkRoot; default /meta)"],
        ["broker", "b", None, "the broker, host:port or meta://host:port"],
        ["timeout", "t", None, "seconds to wait for ZooKeeper, brokers and replies", float],
    ]
    subCommands = _subCommands()

    def getSynopsis(self):
        # A command's --help starts "Usage: metaq [options] COMMAND ...".
        if self.subCommand is None:
            return self.synopsis
        return "Usage: metaq [options]"

    def opt_version(self):
        """
        Print the version and exit.
        """
        print("metaq (metamorphosis) %s" % (metamorphosis.__version__,))
        raise SystemExit(0)

    def postOptions(self):
        if self.subCommand is None:
            raise usage.UsageError("a command is required: " + ", ".join(c[0] for c in COMMANDS))


async def main(reactor, options):
    module = _tool(dict((name, module) for name, module, _ in COMMANDS)[options.subCommand])
    return await module.main(reactor, options.subOptions)


def run(argv=None):
    runTool("metaq", Options(), main, argv)


if __name__ == "__main__":
    run()

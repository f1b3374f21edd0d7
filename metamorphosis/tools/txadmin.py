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

import argparse
import os
import sys

from twisted.internet.defer import ensureDeferred
from twisted.internet.endpoints import UNIXClientEndpoint, connectProtocol
from twisted.internet.task import react
from twisted.protocols import amp

from metamorphosis.broker.config import loadConfig
from metamorphosis.broker.transactions.admin import (
    SOCKET_NAME,
    CommitTransaction,
    CompleteTransaction,
    ForgetTransaction,
    ListTransactions,
    RollbackTransaction,
    adminSocketPath,
)

_COMMANDS = {
    "commit": CommitTransaction,
    "rollback": RollbackTransaction,
    "complete": CompleteTransaction,
    "forget": ForgetTransaction,
}


def parseArguments(argv):
    parser = argparse.ArgumentParser(
        prog="txadmin", description="Heuristic completion of prepared XA transactions."
    )
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--config", help="the broker's server.ini")
    where.add_argument("--data-path", help="the broker's dataLogPath (or dataPath)")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="prepared and heuristically completed transactions")
    for name, command in _COMMANDS.items():
        p = sub.add_parser(name, help=command.__doc__.strip().splitlines()[0])
        p.add_argument("key", help="the XID key, as RECOVER lists it")
        if name == "commit":
            p.add_argument("--one-phase", action="store_true")
    return parser.parse_args(argv)


def socketPath(options):
    if options.config:
        return adminSocketPath(loadConfig(options.config))
    return os.path.join(options.data_path, "transactions", SOCKET_NAME)


async def run(reactor, options, out=sys.stdout, err=sys.stderr):
    try:
        client = await connectProtocol(
            UNIXClientEndpoint(reactor, socketPath(options)), amp.AMP()
        )
    except Exception as e:
        print("cannot reach the broker: %s" % (e,), file=err)
        return 1
    try:
        if options.command == "list":
            answer = await client.callRemote(ListTransactions)
            for key in answer["prepared"]:
                print("%s PREPARED" % (key,), file=out)
            for line in answer["heuristic"]:
                print(line, file=out)
            return 0
        arguments = {"key": options.key}
        if options.command == "commit":
            arguments["onePhase"] = options.one_phase
        answer = await client.callRemote(_COMMANDS[options.command], **arguments)
        if not answer["done"]:
            print("no such transaction: %s" % (options.key,), file=err)
            return 1
        print("%s: %s" % (options.command, options.key), file=out)
        return 0
    finally:
        client.transport.loseConnection()


def main(argv=None):
    options = parseArguments(sys.argv[1:] if argv is None else argv)

    async def go(reactor):
        code = await run(reactor, options)
        if code:
            raise SystemExit(code)

    react(lambda reactor: ensureDeferred(go(reactor)))


if __name__ == "__main__":
    main()

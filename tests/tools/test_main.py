"""
The C{metaq} command: its subcommands, shared options, errors and exit
status, against a real broker process.
"""

import io

from twisted.internet.defer import ensureDeferred
from twisted.trial.unittest import TestCase

from metamorphosis.tools import main as metaq
from metamorphosis.tools.cli import EXIT_FAILURE, EXIT_USAGE, Progress
from tests.tools.support import brokerUrl, closedPort, runMetaq, startBroker


class OptionsTests(TestCase):
    def parse(self, *argv):
        options = metaq.Options()
        options.parseOptions(list(argv))
        return options

    def test_sharedBeforeCommand(self):
        """
        --zookeeper/--zk-root/--timeout given to metaq are the subcommand's
        when it was not given its own.
        """
        options = self.parse("-z", "zk:2181", "--zk-root", "/other", "--timeout", "3",
                             "offsets", "--group", "g")
        self.assertEqual(
            (options.subOptions["zookeeper"], options.subOptions["zk-root"],
             options.subOptions["timeout"]),
            ("zk:2181", "/other", 3.0))

    def test_commandOwnWins(self):
        """
        An option given after the command wins over the one given to metaq.
        """
        options = self.parse("-b", "127.0.0.1:1", "stats", "-b", "127.0.0.1:2")
        self.assertEqual(options.subOptions["broker"], "meta://127.0.0.1:2")

    def test_verbosity(self):
        """
        -v (repeatable) and -q before or after the command set the log level.
        """
        from twisted.logger import LogLevel

        from metamorphosis.tools.cli import logLevel
        self.assertEqual(logLevel(self.parse("stats").subOptions), LogLevel.warn)
        self.assertEqual(logLevel(self.parse("-v", "stats").subOptions), LogLevel.info)
        self.assertEqual(logLevel(self.parse("-v", "stats", "-v").subOptions), LogLevel.debug)
        self.assertEqual(logLevel(self.parse("stats", "-q").subOptions), LogLevel.error)

    def test_everyCommandLoads(self):
        """
        Every registered command's module has an Options and a main.
        """
        for name, module, _ in metaq.COMMANDS:
            tool = metaq._tool(module)
            self.assertTrue(callable(tool.main), name)
            self.assertIsNotNone(tool.Options().getUsage(), name)


class CommandTests(TestCase):
    def test_helpListsEveryCommand(self):
        """
        metaq --help lists every subcommand with its description.
        """
        async def check():
            out, err, status = await runMetaq("--help")
            self.assertEqual(status, 0, err)
            for name, _, description in metaq.COMMANDS:
                self.assertRegex(out, r"\n +%s +%s" % (name, description.split()[0]))
        return ensureDeferred(check())

    def test_usageErrors(self):
        """
        No command, an unknown command or a bad option: exit 2 and the
        reason on stderr, nothing on stdout.
        """
        async def check():
            for argv in [(), ("nosuch",), ("stats", "--nosuch")]:
                out, err, status = await runMetaq(*argv)
                self.assertEqual((status, out), (EXIT_USAGE, ""), argv)
                self.assertIn("metaq", err)
                self.assertIn("--help", err)
        return ensureDeferred(check())

    def test_failure(self):
        """
        A broker that cannot be reached: exit 1, one line on stderr, no
        traceback.
        """
        async def check():
            out, err, status = await runMetaq(
                "--broker", "127.0.0.1:%d" % (closedPort(),), "stats")
            self.assertEqual(status, EXIT_FAILURE)
            self.assertEqual(len(err.splitlines()), 1, err)
            self.assertIn("cannot connect to the broker", err)
            self.assertNotIn("Traceback", err)
        return ensureDeferred(check())

    def test_stats(self):
        """
        metaq --broker URL stats prints the broker's stats.
        """
        async def check():
            broker = await startBroker(self, {"meta-test": 1})
            out, err, status = await runMetaq("--broker", brokerUrl(broker), "stats")
            self.assertEqual(status, 0, err)
            self.assertIn("port %d" % (broker.port,), out.splitlines())
        return ensureDeferred(check())


class Terminal(io.StringIO):
    def __init__(self, tty):
        io.StringIO.__init__(self)
        self.tty = tty

    def isatty(self):
        return self.tty


class ProgressTests(TestCase):
    def test_onTerminal(self):
        """
        On a terminal the count and rate are redrawn on one line at most
        every interval, and the final count ends the line.
        """
        now = [0.0]
        stream = Terminal(True)
        progress = Progress("messages", stream, clock=lambda: now[0], interval=0.5)
        progress.add(10)
        now[0] = 0.25
        progress.add(10)
        now[0] = 2.0
        progress.add(20)
        progress.done()
        self.assertEqual(stream.getvalue(), "\r10 messages\r40 messages, 20/s"
                                            "\r40 messages, 20/s\n")

    def test_quietWhenPipedOrAsked(self):
        """
        Nothing when the stream is not a terminal, or with -q.
        """
        piped = Terminal(False)
        progress = Progress("messages", piped)
        progress.add(5)
        progress.done()
        self.assertEqual(piped.getvalue(), "")
        options = metaq.Options()
        options.parseOptions(["-q", "stats"])
        terminal = Terminal(True)
        progress = Progress("messages", terminal, options.subOptions)
        progress.add(5)
        progress.done()
        self.assertEqual(terminal.getvalue(), "")

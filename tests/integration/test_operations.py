"""
docs/operations.md and its files run as written: the shell session (on
free ports), the sample production server.ini, and the systemd unit
(checked by systemd-analyze verify when it is installed).
"""

import os
import re
import shutil
import socket
import sys

from twisted.internet import utils
from twisted.internet.defer import ensureDeferred
from twisted.trial.unittest import SkipTest, TestCase

from metamorphosis.broker.config import loadConfig
from metamorphosis.broker.service import Options

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DOCS = os.path.join(ROOT, "docs")
BIN = os.path.dirname(sys.executable)


def freePort():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class OperationsDocumentationTests(TestCase):
    timeout = 120

    def test_session(self):
        """
        The session of "A session" runs in a directory of its own, with
        the broker and HTTP ports replaced by free ones, and prints what
        the page says it prints.
        """
        with open(os.path.join(DOCS, "operations.md")) as f:
            [script] = re.findall(r"```sh\n(.*?)```", f.read(), re.S)
        if not shutil.which("curl"):
            raise SkipTest("the session uses curl, which is not installed")
        port, http = freePort(), freePort()
        script = script.replace("8123", str(port)).replace("8120", str(http))
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        self.addCleanup(self._kill, directory)
        env = dict(os.environ, PATH=BIN + os.pathsep + os.environ["PATH"])

        async def check():
            out, err, code = await utils.getProcessOutputAndValue(
                "/bin/bash", ("-ec", script), env=env, path=directory)
            out = out.decode()
            self.assertEqual(code, 0, err)
            self.assertIn('{"ready": true, "reasons": []}', out)
            self.assertIn("one\ntwo\nthree\n", out)
            self.assertIn('metaq_partition_put_messages_total{partition="0-0",topic="demo"} 3.0', out)
            self.assertEqual(re.findall(r"^offset: (\d+) size: (\d+) ", out, re.M),
                             [("0", "23"), ("23", "23"), ("46", "25")], out)
        return ensureDeferred(check())

    def _kill(self, directory):
        try:
            with open(os.path.join(directory, "metaq.pid")) as f:
                os.kill(int(f.read()), 9)
        except (OSError, ValueError):
            pass

    def test_serverIni(self):
        """
        The sample production server.ini loads, with group commit, the
        HTTP endpoint on 8120 and its topics.
        """
        path = os.path.join(DOCS, "server.ini")
        config = loadConfig(path)
        self.assertEqual((config.brokerId, config.serverPort, config.dashboardHttpPort),
                         (1, 8123, 8120))
        self.assertTrue(config.topicConfig("orders").groupCommit)
        self.assertEqual(config.topicConfig("orders").numPartitions, 8)
        self.assertEqual(config.topicConfig("audit").deletePolicy, "delete,720")
        self.assertEqual(config.zookeeper.zkConnect, "10.0.0.1:2181,10.0.0.2:2181,10.0.0.3:2181")
        options = Options()
        options.parseOptions(["--config", path])
        self.assertEqual(options["http"], "tcp:8120")

    def test_systemdUnit(self):
        """
        systemd-analyze verify finds nothing to say about the unit (its
        ExecStart pointed at this checkout's twistd), and the options of
        its ExecStart are the broker's.
        """
        analyze = shutil.which("systemd-analyze")
        if analyze is None:
            raise SkipTest("systemd-analyze is not installed")
        with open(os.path.join(DOCS, "metaq.service")) as f:
            unit = f.read()
        [execStart] = re.findall(r"^ExecStart=(\S+)", unit, re.M)
        self.assertEqual(os.path.basename(execStart), "twistd")
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        path = os.path.join(directory, "metaq.service")
        with open(path, "w") as f:
            f.write(unit.replace(execStart, os.path.join(BIN, "twistd")))

        async def check():
            out, err, code = await utils.getProcessOutputAndValue(
                analyze, ("verify", path), env=os.environ)
            ours = [line for line in (out + err).decode().splitlines() if "metaq.service" in line]
            self.assertEqual((code, ours), (0, []))
            # The logger of ExecStart exists and gives an observer.
            logger = re.search(r"--logger=(\S+)", unit).group(1)
            module, name = logger.rsplit(".", 1)
            observer = getattr(__import__(module, fromlist=[name]), name)()
            self.assertTrue(callable(observer))
        return ensureDeferred(check())

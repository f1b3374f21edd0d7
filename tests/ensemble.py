"""
A ZooKeeper ensemble of real servers on loopback for the cluster tests,
started, killed and restarted through C{scripts/zookeeper.sh} (which picks
free client, quorum and election ports and waits until a server serves).

Which server leads is asked of each server with the C{srvr} four-letter
word, which the script's configuration allows (C{4lw.commands.whitelist}).
"""

import os

from twisted.internet import utils

SCRIPT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                      "scripts", "zookeeper.sh")


class Ensemble:
    """
    C{size} ZooKeeper servers, numbered 1..size, with their data and logs in
    C{directory}.

    @ivar connect: the connect string once L{start} has fired.
    """

    def __init__(self, directory, size=3):
        self.directory = os.path.abspath(directory)
        self.size = size
        self.connect = None

    async def _run(self, *args):
        out, err, code = await utils.getProcessOutputAndValue(
            "/bin/bash", (SCRIPT,) + tuple(str(a) for a in args), env=os.environ)
        if code != 0:
            raise RuntimeError("zookeeper.sh %s failed (%s): %s" % (
                " ".join(map(str, args)), code, err.decode("utf-8", "replace")))
        return out.decode("utf-8").strip()

    async def start(self):
        """
        Start every server; fires with the connect string once all serve.
        """
        self.connect = await self._run("start", self.directory, self.size)
        return self.connect

    def stop(self):
        return self._run("stop", self.directory)

    def mode(self, server):
        """
        C{leader}, C{follower}, C{not serving} or C{down}.
        """
        return self._run("mode", self.directory, server)

    async def modes(self):
        return {server: await self.mode(server) for server in range(1, self.size + 1)}

    async def leader(self):
        """
        The number of the server that leads now, or L{None}.
        """
        for server, mode in (await self.modes()).items():
            if mode == "leader":
                return server
        return None

    async def followers(self):
        return [server for server, mode in (await self.modes()).items() if mode == "follower"]

    def kill(self, server):
        """
        SIGKILL one server.
        """
        return self._run("kill", self.directory, server)

    def restart(self, server):
        """
        Start a killed server again; fires once it serves (which needs a
        quorum).
        """
        return self._run("restart", self.directory, server)

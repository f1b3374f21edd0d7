"""
A broker in its own process (C{twistd -n metaq}) that tests can kill with
SIGKILL and start again on the same data.
"""

import os
import re
import sys

from twisted.internet import defer, error, protocol

TWISTD = os.path.join(os.path.dirname(sys.executable), "twistd")
_REPOSITORY = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

_LISTENING = re.compile(
    rb"listening on 127\.0\.0\.1:(\d+)"
)


class BrokerProcess(protocol.ProcessProtocol):
    """
    One run of the broker; L{listening} fires with its port.
    """

    def __init__(self):
        self.output = b""
        self.listening = defer.Deferred()
        self.ended = defer.Deferred()
        self.transport = None
        self._waiters = []

    def outReceived(self, data):
        self.output += data
        match = _LISTENING.search(self.output)
        if match and not self.listening.called:
            self.listening.callback(int(match.group(1)))
        for waiter in list(self._waiters):
            match = waiter[0].search(self.output)
            if match:
                self._waiters.remove(waiter)
                waiter[1].callback(match)

    def logged(self, pattern):
        """
        A Deferred firing with the first match of C{pattern} (bytes) in
        the output, once it is there.
        """
        d = defer.Deferred()
        self._waiters.append((re.compile(pattern), d))
        self.outReceived(b"")
        return d

    errReceived = outReceived

    def processEnded(self, reason):
        if not self.listening.called:
            self.listening.errback(RuntimeError(self.output.decode(errors="replace")))
        self.ended.callback(reason.value)

    def kill(self):
        """
        SIGKILL the broker; the Deferred fires when it is gone.
        """
        try:
            self.transport.signalProcess("KILL")
        except error.ProcessExitedAlready:
            pass
        return self.ended


def startBroker(reactor, config, workdir, faults=False, arguments=()):
    """
    Run C{twistd -n metaq --config <config>} listening on a free loopback
    port, in C{workdir}.

    @param faults: run it through L{tests.integration.faultybroker}, whose
        disk faults the test switches on with files in C{workdir}.
    @param arguments: more options of C{twistd metaq}.
    @return: a L{BrokerProcess}.
    """
    process = BrokerProcess()
    arguments = ["--nodaemon", "--pidfile=", "metaq", "--config", config,
                 "--port", "tcp:0:interface=127.0.0.1", *arguments]
    env = os.environ.copy()
    if faults:
        executable = sys.executable
        arguments = [executable, "-m", "tests.integration.faultybroker"] + arguments
        env["PYTHONPATH"] = os.pathsep.join(
            filter(None, [_REPOSITORY, env.get("PYTHONPATH")]))
    else:
        executable = TWISTD
        arguments = [TWISTD] + arguments
    reactor.spawnProcess(process, executable, arguments, env=env, path=workdir)
    return process

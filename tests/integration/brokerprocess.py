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
    rb"listening on IPv4Address\(type='TCP', host='127.0.0.1', port=(\d+)\)"
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

    def outReceived(self, data):
        self.output += data
        match = _LISTENING.search(self.output)
        if match and not self.listening.called:
            self.listening.callback(int(match.group(1)))

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


def startBroker(reactor, config, workdir, faults=False):
    """
    Run C{twistd -n metaq --config <config>} listening on a free loopback
    port, in C{workdir}.

    @param faults: run it through L{tests.integration.faultybroker}, whose
        disk faults the test switches on with files in C{workdir}.
    @return: a L{BrokerProcess}.
    """
    process = BrokerProcess()
    arguments = ["--nodaemon", "--pidfile=", "metaq", "--config", config,
                 "--port", "tcp:0:interface=127.0.0.1"]
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

"""
A headless Chromium driven over the DevTools protocol, for tests of web
pages in a real browser.

Chromium is started with C{--remote-debugging-pipe}: it reads protocol
messages (JSON, each ended by a NUL byte) on its file descriptor 3 and
writes answers and events on descriptor 4, so no port and no WebSocket
library are needed.
"""

import base64
import json
import os
import shutil

from twisted.internet import defer, error, protocol, reactor
from twisted.trial.unittest import SkipTest

from tests.waiting import waitFor


def chromiumPath():
    """
    The Chromium executable.

    @raise SkipTest: there is none (C{scripts/setup.sh --test} installs
        Debian's C{chromium}).
    """
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    raise SkipTest("no chromium on PATH; scripts/setup.sh --test installs it")


class DevToolsError(Exception):
    """
    The browser answered a command with an error.
    """


class _Pipe(protocol.ProcessProtocol):
    def __init__(self):
        self.buffer = b""
        self.waiting = {}
        self.output = b""
        self.ended = defer.Deferred()

    def childDataReceived(self, childFD, data):
        if childFD != 4:
            self.output = (self.output + data)[-20000:]
            return
        self.buffer += data
        while b"\0" in self.buffer:
            message, self.buffer = self.buffer.split(b"\0", 1)
            answer = json.loads(message)
            d = self.waiting.pop(answer.get("id"), None)
            if d is None:
                continue
            if "error" in answer:
                d.errback(DevToolsError(answer["error"]))
            else:
                d.callback(answer.get("result", {}))

    def processEnded(self, reason):
        for d in self.waiting.values():
            d.errback(reason)
        self.waiting.clear()
        self.ended.callback(None)


class Browser:
    """
    One headless Chromium with one page.
    """

    def __init__(self, testCase):
        self._pipe = _Pipe()
        self._ids = 0
        self._session = None
        profile = os.path.abspath(testCase.mktemp())
        arguments = [chromiumPath(), "--headless", "--remote-debugging-pipe",
                     "--user-data-dir=" + profile, "--disable-gpu", "--no-first-run",
                     "--no-default-browser-check", "--window-size=1200,1400"]
        if os.geteuid() == 0:
            # Chromium refuses to run as root inside its sandbox.
            arguments.append("--no-sandbox")
        self._transport = reactor.spawnProcess(
            self._pipe, arguments[0], arguments, env=os.environ.copy(),
            childFDs={0: "w", 1: "r", 2: "r", 3: "w", 4: "r"})
        testCase.addCleanup(self.close)

    def send(self, method, **params):
        """
        One DevTools command, to the page once L{open} attached it.

        @return: a Deferred firing with its result.
        """
        self._ids += 1
        message = {"id": self._ids, "method": method, "params": params}
        if self._session is not None and not method.startswith("Target."):
            message["sessionId"] = self._session
        d = self._pipe.waiting[self._ids] = defer.Deferred()
        self._transport.writeToChild(3, json.dumps(message).encode("utf-8") + b"\0")
        return d

    async def open(self, url):
        target = await self.send("Target.createTarget", url=url)
        attached = await self.send("Target.attachToTarget", targetId=target["targetId"],
                                   flatten=True)
        self._session = attached["sessionId"]

    async def evaluate(self, expression):
        """
        The value of a JavaScript expression in the page.
        """
        result = await self.send("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in result:
            raise DevToolsError(result["exceptionDetails"])
        return result["result"].get("value")

    async def text(self, selector):
        """
        The text of the first element matching C{selector}, or L{None}.
        """
        return await self.evaluate(
            "(e => e ? e.textContent : null)(document.querySelector(%s))"
            % (json.dumps(selector),))

    async def waitFor(self, expression, timeout=60.0):
        """
        Wait until a JavaScript expression is true in the page.
        """
        async def true():
            return bool(await self.evaluate(expression))
        await waitFor(true, timeout=timeout, interval=0.2, what=expression)

    async def screenshot(self, path):
        """
        Save a PNG of the page at C{path}.
        """
        result = await self.send("Page.captureScreenshot", format="png")
        with open(path, "wb") as f:
            f.write(base64.b64decode(result["data"]))

    def close(self):
        try:
            self._transport.signalProcess("KILL")
        except error.ProcessExitedAlready:
            pass
        return self._pipe.ended

"""
What the HTTP endpoint tests share: a real broker process serving HTTP on
a free loopback port, and plain HTTP GETs to it.
"""

import json
import os

from twisted.internet import reactor
from twisted.web.client import Agent, readBody

from metamorphosis.tools.cli import openBroker
from tests.integration.brokerprocess import startBroker

HTTP_LISTENING = rb"HTTP endpoint \(metrics, health, dashboard\) on 127\.0\.0\.1:(\d+)"


def serverIni(topics, zkConnect=None, zkRoot="/meta", system=()):
    lines = ["[system]", "brokerId=3", "hostName=127.0.0.1", "dataPath=data",
             "unflushThreshold=0", *system, "[zookeeper]",
             "zk.zkEnable=%s" % ("true" if zkConnect else "false"),
             "zk.zkConnect=%s" % (zkConnect or ""), "zk.zkRoot=%s" % (zkRoot,),
             "zk.zkSessionTimeoutMs=4000", "zk.zkConnectionTimeoutMs=4000", "zk.zkSyncTimeMs=0"]
    for topic, partitions in topics.items():
        lines += ["[topic=%s]" % (topic,), "numPartitions=%d" % (partitions,)]
    return "\n".join(lines) + "\n"


class HttpBroker:
    """
    A C{twistd metaq --http tcp:0:interface=127.0.0.1} process.

    @ivar port: the broker's port; @ivar httpPort: the HTTP port.
    """

    @classmethod
    async def start(cls, testCase, topics, zkConnect=None, zkRoot="/meta", arguments=(),
                    system=()):
        self = cls()
        self.folder = folder = os.path.abspath(testCase.mktemp())
        os.makedirs(folder)
        ini = os.path.join(folder, "server.ini")
        with open(ini, "w") as f:
            f.write(serverIni(topics, zkConnect, zkRoot, system))
        self.process = startBroker(reactor, ini, folder, arguments=(
            "--http", "tcp:0:interface=127.0.0.1", *arguments))
        testCase.addCleanup(self.process.kill)
        match = await self.process.logged(HTTP_LISTENING)
        self.httpPort = int(match.group(1))
        self.port = await self.process.listening
        self.url = "http://127.0.0.1:%d/" % (self.httpPort,)
        return self

    async def get(self, path):
        """
        GET C{path}: C{(status code, headers, body bytes)}.
        """
        response = await Agent(reactor).request(b"GET", (self.url + path).encode("ascii"))
        body = await readBody(response)
        return response.code, response.headers, body

    async def getJSON(self, path):
        code, _, body = await self.get(path)
        return code, json.loads(body)

    async def put(self, topic, partition, payloads):
        client = await openBroker(reactor, "meta://127.0.0.1:%d" % (self.port,), 10.0)
        try:
            for payload in payloads:
                reply = await client.put(topic, partition, payload, 0)
                assert reply.code == 200, reply
        finally:
            client.transport.loseConnection()

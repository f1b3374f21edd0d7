"""
The broker's HTTP endpoint (C{dashboardHttpPort}, or C{--http}), served by
C{twisted.web} in the broker process:

  - C{/metrics}: Prometheus text exposition (L{metamorphosis.broker.web.metrics});
  - C{/health}: 200 while the process serves HTTP at all (liveness);
  - C{/ready}: 200 when the broker should get traffic, else 503 with the
    reasons (readiness);
  - C{/}: the dashboard page, which polls C{/status.json}.

The metrics are rendered on the reactor thread: they read the broker's live
objects, which only the reactor thread may touch, and the work is a walk
over the partitions.
"""

import json
from importlib import resources

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from twisted.internet import defer, threads
from twisted.logger import Logger
from twisted.web import server
from twisted.web.resource import Resource

from metamorphosis.broker.web.metrics import brokerRegistry
from metamorphosis.broker.web.status import BrokerStatus, offsetForTime

JSON = b"application/json; charset=utf-8"

#: Seconds a scrape waits for a reading of the consumer groups.
GROUPS_WAIT = 2.0

#: Seconds without a byte after which an HTTP connection is closed (a
#: client that opens connections and sends nothing holds nothing for long).
IDLE_TIMEOUT = 60


def _json(request, value, code=200):
    request.setResponseCode(code)
    request.setHeader(b"content-type", JSON)
    request.setHeader(b"cache-control", b"no-store")
    return json.dumps(value, sort_keys=True).encode("utf-8") + b"\n"


class MetricsResource(Resource):
    """
    The exposition, rendered once the consumer groups are read from
    ZooKeeper (at most every few seconds, see L{GroupsView}) or after
    L{GROUPS_WAIT} seconds with the last reading.
    """

    isLeaf = True

    def __init__(self, registry, status, reactor):
        Resource.__init__(self)
        self.registry = registry
        self.status = status
        self.reactor = reactor

    def render_GET(self, request):
        finished = request.notifyFinish()
        finished.addErrback(lambda failure: None)
        reading = defer.ensureDeferred(self.status.groups.current())
        reading.addTimeout(GROUPS_WAIT, self.reactor)

        def render(ignored):
            if not finished.called:
                request.setHeader(b"content-type", CONTENT_TYPE_LATEST.encode("ascii"))
                request.write(generate_latest(self.registry))
                request.finish()

        reading.addBoth(render)
        return server.NOT_DONE_YET


class HealthResource(Resource):
    isLeaf = True

    def render_GET(self, request):
        return _json(request, {"status": "ok"})


class ReadyResource(Resource):
    isLeaf = True

    def __init__(self, status):
        Resource.__init__(self)
        self.status = status

    def render_GET(self, request):
        reasons = self.status.notReady()
        return _json(request, {"ready": not reasons, "reasons": reasons},
                     200 if not reasons else 503)


class StatusResource(Resource):
    """
    The dashboard's data; answered once the consumer groups are read.
    """

    isLeaf = True
    log = Logger()

    def __init__(self, status):
        Resource.__init__(self)
        self.status = status

    def render_GET(self, request):
        d = defer.ensureDeferred(self.status.snapshot())
        finished = request.notifyFinish()
        finished.addErrback(lambda failure: d.cancel())

        def write(snapshot):
            if not finished.called:
                request.write(_json(request, snapshot))
                request.finish()

        def failed(failure):
            if failure.check(defer.CancelledError):
                return
            self.log.failure("Cannot render the broker's status", failure)
            if not finished.called:
                request.write(_json(request, {"error": failure.getErrorMessage()}, 500))
                request.finish()

        d.addCallbacks(write, failed)
        return server.NOT_DONE_YET


class OffsetForTimeResource(Resource):
    """
    C{/offsets.json?topic=T&partition=N&time=MS}: the offset of partition
    N of topic T to read from to get what was written at or after MS
    (milliseconds since the epoch); see L{offsetForTime}.  For
    C{metaq offsets --reset-to TIME}.
    """

    isLeaf = True

    def __init__(self, broker):
        Resource.__init__(self)
        self.broker = broker

    def render_GET(self, request):
        try:
            topic = request.args[b"topic"][0].decode("utf-8")
            partition = int(request.args[b"partition"][0])
            millis = int(request.args[b"time"][0])
        except (KeyError, IndexError, ValueError, UnicodeDecodeError):
            return _json(request, {"error": "give topic, partition and time (ms)"}, 400)
        store = self.broker.storeManager.getStore(topic, partition)
        if store is None:
            return _json(request, {"error": "no partition %d of topic %r" % (partition, topic)},
                         404)
        d = threads.deferToThread(offsetForTime, store.segments, store.maxOffset, millis / 1000.0)
        finished = request.notifyFinish()
        finished.addErrback(lambda failure: None)

        def answer(body, code=200):
            if not finished.called:
                request.write(_json(request, body, code))
                request.finish()

        d.addCallbacks(
            lambda offset: answer({"topic": topic, "partition": partition, "time": millis,
                                   "offset": offset}),
            lambda failure: answer({"error": failure.getErrorMessage()}, 500))
        return server.NOT_DONE_YET


class DashboardResource(Resource):
    isLeaf = True

    def __init__(self):
        Resource.__init__(self)
        self.page = resources.files(__package__).joinpath("dashboard.html").read_bytes()

    def render_GET(self, request):
        if request.postpath not in ([], [b""]):
            request.setResponseCode(404)
            return b"not found\n"
        request.setHeader(b"content-type", b"text/html; charset=utf-8")
        return self.page


class BrokerSite(server.Site):
    """
    A C{Site} without access log: probes and scrapes every few seconds
    would drown the broker's log.
    """

    noisy = False

    def log(self, request):
        pass


class BrokerHttp:
    """
    The HTTP endpoint of one broker: listens at C{endpoint} from the start
    of the broker (so C{/health} answers while the stores recover) to its
    end.

    @ivar port: the listening port, once listening.
    """

    log = Logger()

    def __init__(self, broker, endpoint):
        self.endpoint = endpoint
        self.status = BrokerStatus(broker)
        self.registry, fsyncs = brokerRegistry(self.status)
        broker.storeManager.fsyncObserver = fsyncs.observe
        root = Resource()
        root.putChild(b"", DashboardResource())
        root.putChild(b"metrics", MetricsResource(self.registry, self.status, broker.reactor))
        root.putChild(b"health", HealthResource())
        root.putChild(b"ready", ReadyResource(self.status))
        root.putChild(b"status.json", StatusResource(self.status))
        root.putChild(b"offsets.json", OffsetForTimeResource(broker))
        self.site = BrokerSite(root, timeout=IDLE_TIMEOUT)
        self.port = None

    async def listen(self):
        self.port = await self.endpoint.listen(self.site)
        address = self.port.getHost()
        self.log.info("HTTP endpoint (metrics, health, dashboard) on {address}",
                      address="%s:%d" % (address.host, address.port))
        return self.port

    async def stop(self):
        if self.port is not None:
            port, self.port = self.port, None
            await port.stopListening()

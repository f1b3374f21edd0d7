"""
Throughput and latency of the broker (issue 4, Performance).

For each flush policy (default: unflushThreshold=1000; group commit:
unflushThreshold=0) it starts a fresh broker (C{twistd -n metaq} with a
generated server.ini on a free loopback port) and sends COUNT sync puts of
S bytes in two shapes: first (the headline rows, --shared) ONE connection
with N puts in flight, matched by opaque, which is how the Java producer's
threads share one connection per broker; then (--producers) P connections
with one put in flight each. Finally C consumers each fetch everything of
the last row of each size with 1 MiB gets. It prints msgs/s, MB/s, put
latency p50/p99, the broker's peak RSS and the broker's CPU time per message.

    .venv/bin/python benchmarks/broker.py                  # the full matrix
    .venv/bin/python benchmarks/broker.py --count 20000 --shared 1,10 --producers 0 --sizes 1024
    .venv/bin/python benchmarks/broker.py --broker 127.0.0.1:8123 --pid 1234
    .venv/bin/python benchmarks/broker.py --transports plain,tls --producers 10 --sizes 1024

With --transports plain,tls the broker also gets an ssl: listener (a
self-signed certificate made at start) and every producer row is run over
both, so the TLS throughput cost reads off two adjacent lines.

With --broker it uses a running broker instead (its topics must accept
C{bench-*}; --pid gives the process for the RSS and CPU figures).

The load generator is plain non-blocking sockets and a selector, so that on
a small machine it leaves the CPU to the broker: what it measures is the
broker, not a client library.
"""

import argparse
import os
import selectors
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import time

from metamorphosis.protocol.records import HEADER_SIZE, checksum, decodeHeader

MiB = 1024 * 1024


class Progress:
    """
    A one-line progress bar on stderr when it is a terminal.
    """

    def __init__(self, label, total):
        self.label, self.total, self.done = label, total, 0
        self.enabled = sys.stderr.isatty()
        self._last = 0.0

    def advance(self, n=1):
        self.done += n
        now = time.monotonic()
        if self.enabled and (now - self._last > 0.1 or self.done >= self.total):
            self._last = now
            filled = int(30 * min(self.done, self.total) / self.total)
            sys.stderr.write(f"\r{self.label:<28} [{'#' * filled}{' ' * (30 - filled)}] "
                             f"{100 * self.done // self.total:3d}%")
            sys.stderr.flush()

    def finish(self):
        if self.enabled:
            sys.stderr.write("\r" + " " * 72 + "\r")
            sys.stderr.flush()


class BrokerProcess:
    """
    The broker's peak resident set size (VmHWM of /proc/<pid>/status) and
    the CPU time it used (so that figures taken on a busy machine still say
    what one message costs the broker).
    """

    def __init__(self, pid):
        self.pid = pid

    def peakMiB(self):
        try:
            with open(f"/proc/{self.pid}/status") as status:
                for line in status:
                    if line.startswith("VmHWM:"):
                        return int(line.split()[1]) / 1024
        except (OSError, TypeError):
            pass
        return float("nan")

    def cpuSeconds(self):
        try:
            with open(f"/proc/{self.pid}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, TypeError):
            return float("nan")


class Exchange:
    """
    One connection: sends requests and collects the reply frames
    (C{result} or C{value}) it gets back, matched to their requests by
    opaque, so that any number may be in flight.
    """

    def __init__(self, address):
        host, port, *context = address
        self.sock = socket.create_connection((host, port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if context and context[0] is not None:
            self.sock = context[0].wrap_socket(self.sock, server_hostname=host)
        self.buffer = bytearray()
        self.sentAt = {}

    def send(self, request, opaque=0):
        self.sentAt[opaque] = time.perf_counter()
        self.sock.sendall(request)

    def receiveAll(self):
        """
        Read what is there; return every whole reply now buffered, as
        C{(kind, code, body, opaque)}.
        """
        data = self.sock.recv(4 * MiB)
        if not data:
            raise ConnectionError("the broker closed the connection")
        self.buffer += data
        # TLS hands over one record per recv: what it already decrypted
        # would not wake the selector again.
        while isinstance(self.sock, ssl.SSLSocket) and self.sock.pending():
            self.buffer += self.sock.recv(4 * MiB)
        replies = []
        while True:
            end = self.buffer.find(b"\r\n")
            if end < 0:
                return replies
            tokens = bytes(self.buffer[:end]).split(b" ")
            isResult = tokens[0] == b"result"
            length = int(tokens[2] if isResult else tokens[1])
            if len(self.buffer) < end + 2 + length:
                return replies
            body = bytes(self.buffer[end + 2:end + 2 + length])
            del self.buffer[:end + 2 + length]
            code = int(tokens[1]) if isResult else None
            opaque = int(tokens[3] if isResult else tokens[2])
            replies.append((tokens[0], code, body, opaque))

    def receive(self):
        """
        The first whole reply buffered as C{(kind, code, body)}, or
        L{None} (one request in flight).
        """
        replies = self.receiveAll()
        return replies[0][:3] if replies else None

    def call(self, request):
        self.send(request)
        while True:
            reply = self.receive()
            if reply is not None:
                return reply

    def close(self):
        self.sock.close()


def produce(address, topic, producers, size, count, progress, inflight=1, spread=False):
    """
    C{count} sync puts of C{size} bytes over C{producers} connections, each
    with C{inflight} puts in flight (the Java client's threads share one
    connection per broker: one connection with N in flight is its shape).
    The puts a read of replies frees go out in one write, or with
    C{spread} one write each, as the Java client's threads send them when
    each wakes up to its reply: the broker then reads them in several
    reads, a few at a time.

    @return: elapsed seconds and the sorted latencies.
    """
    payload = os.urandom(size)
    # put topic partition length flag checksum opaque
    head = b"put %s 0 %d 0 %d " % (topic.encode(), size, checksum(payload))

    def request(opaque):
        return b"%s%d\r\n%s" % (head, opaque, payload)

    exchanges = [Exchange(address) for _ in range(producers)]
    selector = selectors.DefaultSelector()
    for exchange in exchanges:
        selector.register(exchange.sock, selectors.EVENT_READ, exchange)
    latencies = []
    remaining = count
    nextOpaque = 1
    start = time.perf_counter()
    outstanding = 0
    for _ in range(inflight):
        for exchange in exchanges:
            if remaining:
                exchange.send(request(nextOpaque), nextOpaque)
                nextOpaque += 1
                remaining -= 1
                outstanding += 1
    while outstanding:
        for key, _ in selector.select():
            exchange = key.data
            # The next requests go out together, as the Java client's
            # write queue sends what its threads put in meanwhile.
            batch = []
            for kind, code, body, opaque in exchange.receiveAll():
                latencies.append(time.perf_counter() - exchange.sentAt.pop(opaque))
                if code != 200:
                    raise RuntimeError(f"put failed: {code} {body[:200]!r}")
                progress.advance()
                if remaining:
                    remaining -= 1
                    batch.append(nextOpaque)
                    nextOpaque += 1
                else:
                    outstanding -= 1
            if batch:
                now = time.perf_counter()
                for opaque in batch:
                    exchange.sentAt[opaque] = now
                if spread:
                    for opaque in batch:
                        exchange.sock.sendall(request(opaque))
                else:
                    exchange.sock.sendall(b"".join(request(opaque) for opaque in batch))
    elapsed = time.perf_counter() - start
    for exchange in exchanges:
        exchange.close()
    latencies.sort()
    return elapsed, latencies


def countRecords(data):
    """
    The complete records at the start of C{data} and their total size.
    """
    position, messages = 0, 0
    while position + HEADER_SIZE <= len(data):
        end = position + HEADER_SIZE + decodeHeader(data, position)[0]
        if end > len(data):
            break
        position, messages = end, messages + 1
    return messages, position


def waitFlushed(exchange, topic, size):
    """
    Wait until the broker's flushed end of C{topic} covers everything
    produced (with C{unflushThreshold} the tail waits for the flush timer),
    so that the consumer figures measure reading only.
    """
    while int(exchange.call(b"offset %s g 0 %d 0\r\n" % (topic.encode(), 2**62))[2]) < size:
        time.sleep(0.2)


def consume(address, topic, size, consumers, expected, progress):
    """
    C{consumers} connections each read all C{expected} messages of
    C{topic} (as separate groups) with 1 MiB gets.
    """
    exchanges = [Exchange(address) for _ in range(consumers)]
    waitFlushed(exchanges[0], topic, expected * (HEADER_SIZE + size))
    selector = selectors.DefaultSelector()
    state = {}

    def fetch(index, exchange):
        offset = state[exchange][0]
        exchange.send(b"get %s g%d 0 %d %d %d\r\n" % (topic.encode(), index, offset, MiB, index))

    start = time.perf_counter()
    for index, exchange in enumerate(exchanges):
        state[exchange] = [0, 0, index]
        selector.register(exchange.sock, selectors.EVENT_READ, exchange)
        fetch(index, exchange)
    received = 0
    active = len(exchanges)
    while active:
        for key, _ in selector.select():
            exchange = key.data
            reply = exchange.receive()
            if reply is None:
                continue
            kind, code, body = reply
            if kind != b"value":
                raise RuntimeError(f"get failed: {reply[:2]} {body[:200]!r}")
            messages, consumed = countRecords(body)
            state[exchange][0] += consumed
            state[exchange][1] += messages
            received += consumed
            progress.advance(messages)
            if state[exchange][1] < expected:
                fetch(state[exchange][2], exchange)
            else:
                active -= 1
    elapsed = time.perf_counter() - start
    for exchange in exchanges:
        exchange.close()
    return elapsed, sum(s[1] for s in state.values()), received


def percentile(values, fraction):
    return values[min(len(values) - 1, int(fraction * len(values)))] * 1000


def freePort():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def awaitListening(process, addresses, what, attempts=300):
    """
    Return once every C{(host, port, ...)} of C{addresses} takes a
    connection, trying every 0.1 s; fail if C{process} (which serves them)
    exits first, or after C{attempts} tries, and then kill it, so that no
    broker that never listened is left behind.  C{what} names it in the
    error.
    """
    for _ in range(attempts):
        try:
            for address in addresses:
                socket.create_connection(address[:2], timeout=0.2).close()
            return
        except OSError:
            if process.poll() is not None:
                raise RuntimeError(f"{what} did not start")
            time.sleep(0.1)
    process.kill()
    process.wait()
    raise RuntimeError(f"{what} did not listen in time")


def selfSignedCertificate(directory):
    """
    A key and certificate for 127.0.0.1 in C{directory}/broker.pem, and the
    client context trusting it.
    """
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(
            [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .sign(key, hashes.SHA256()))
    path = os.path.join(directory, "broker.pem")
    pem = certificate.public_bytes(serialization.Encoding.PEM)
    with open(path, "wb") as f:
        f.write(pem + key.private_bytes(serialization.Encoding.PEM,
                                        serialization.PrivateFormat.PKCS8,
                                        serialization.NoEncryption()))
    context = ssl.create_default_context(cadata=pem.decode())
    return path, context


def startBroker(policy, directory, tls=False, system=""):
    """
    A broker on a free port, and with C{tls} an ssl: listener beside it;
    C{system} holds more C{[system]} lines of its server.ini.

    @return: the process and the addresses by transport.
    """
    port = freePort()
    listen = []
    addresses = {"plain": ("127.0.0.1", port)}
    if tls:
        tlsPort = freePort()
        pem, context = selfSignedCertificate(directory)
        listen = ["--listen", f"ssl:{tlsPort}:interface=127.0.0.1:privateKey={pem}"]
        addresses["tls"] = ("127.0.0.1", tlsPort, context)
    ini = os.path.join(directory, "server.ini")
    with open(ini, "w") as f:
        f.write(f"[system]\nbrokerId=0\nnumPartitions=1\nserverPort={port}\n"
                f"unflushThreshold={0 if policy == 'group' else 1000}\nunflushInterval=10000\n"
                f"dataPath={os.path.join(directory, 'data')}\nmaxTransferSize={MiB}\n{system}"
                "[zookeeper]\nzk.zkEnable=false\n[topic=bench-*]\n")
    twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
    process = subprocess.Popen(
        [twistd, "--nodaemon", "--pidfile=", "--logfile", os.path.join(directory, "broker.log"),
         "metaq", "--config", ini, "--port", f"tcp:{port}:interface=127.0.0.1"] + listen,
        cwd=directory)
    awaitListening(process, addresses.values(), "the broker in " + directory)
    return process, addresses


def runPolicy(args, policy, addresses, broker):
    print(f"\n== flush policy: {policy} "
          f"({'unflushThreshold=0, group commit' if policy == 'group' else 'unflushThreshold=1000'})")
    print(f"{'transport':>9} {'shape':>11} {'size':>6} {'msgs':>8} {'msgs/s':>9} {'MB/s':>7} "
          f"{'p50 ms':>7} {'p99 ms':>7} {'peak RSS MiB':>12} {'broker CPU us/msg':>17}")
    topics = {}
    address = addresses["plain"]
    # The headline rows first: one connection shared by N senders (the
    # Java producer's shape), then P connections with one put in flight.
    shapes = [(1, n) for n in args.shared] + [(p, 1) for p in args.producers]
    for producers, inflight in shapes:
        for size in args.sizes:
            for transport in args.transports:
                shape = f"1 conn x{inflight}" if inflight > 1 or producers == 1 else f"{producers} conns"
                topic = (f"bench-{policy}-{transport}-{producers}x{inflight}-{size}-"
                         f"{int(time.time())}")
                progress = Progress(f"put {transport} {shape} S={size}", args.count)
                cpu = broker.cpuSeconds()
                elapsed, latencies = produce(addresses[transport], topic, producers, size,
                                             args.count, progress, inflight)
                cpu = broker.cpuSeconds() - cpu
                progress.finish()
                rate = args.count / elapsed
                print(f"{transport:>9} {shape:>11} {size:>6} {args.count:>8} {rate:>9.0f} "
                      f"{rate * size / 1e6:>7.1f} {percentile(latencies, 0.5):>7.2f} "
                      f"{percentile(latencies, 0.99):>7.2f} {broker.peakMiB():>12.0f} "
                      f"{cpu / args.count * 1e6:>17.0f}", flush=True)
                if transport == "plain":
                    topics[size] = topic
    if args.consumers < 1:
        return
    print(f"{'consumers':>9} {'size':>6} {'msgs':>8} {'msgs/s':>9} {'MB/s':>7} "
          f"{'':>7} {'':>7} {'peak RSS MiB':>12} {'broker CPU us/msg':>17}")
    for size, topic in topics.items():
        progress = Progress(f"get C={args.consumers} S={size}", args.count * args.consumers)
        cpu = broker.cpuSeconds()
        elapsed, messages, received = consume(
            address, topic, size, args.consumers, args.count, progress)
        cpu = broker.cpuSeconds() - cpu
        progress.finish()
        print(f"{args.consumers:>9} {size:>6} {messages:>8} {messages / elapsed:>9.0f} "
              f"{received / elapsed / 1e6:>7.1f} {'':>7} {'':>7} {broker.peakMiB():>12.0f} "
              f"{cpu / messages * 1e6:>17.1f}", flush=True)


def main(args):
    if args.broker:
        host, port = args.broker.rsplit(":", 1)
        for policy in args.flush:
            runPolicy(args, policy, {"plain": (host, int(port))}, BrokerProcess(args.pid))
        return
    for policy in args.flush:
        directory = tempfile.mkdtemp(prefix="metaq-bench-")
        process, addresses = startBroker(policy, directory, tls="tls" in args.transports,
                                         system="".join(line + "\n" for line in args.system))
        try:
            runPolicy(args, policy, addresses, BrokerProcess(process.pid))
        finally:
            process.terminate()
            process.wait(60)
            shutil.rmtree(directory, ignore_errors=True)


def parseArguments(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ints = lambda text: [int(x) for x in text.split(",") if int(x) > 0]
    parser.add_argument("--count", type=int, default=100000, help="puts per row")
    parser.add_argument("--shared", type=ints, default=[1, 10],
                        help="rows of ONE connection with N puts in flight (matched by "
                             "opaque), as the Java producer's threads share a connection; "
                             "0 for none")
    parser.add_argument("--producers", type=ints, default=[10, 50],
                        help="rows of P connections with one put in flight each; 0 for none")
    parser.add_argument("--sizes", type=ints, default=[256, 1024, 4096])
    parser.add_argument("--consumers", type=int, default=1,
                        help="consumer connections reading everything back (0: no consuming)")
    parser.add_argument("--flush", type=lambda t: t.split(","), default=["default", "group"],
                        help="default and/or group, comma separated")
    parser.add_argument("--transports", type=lambda t: t.split(","), default=["plain"],
                        help="plain and/or tls, comma separated: tls puts go through an "
                             "ssl: listener of the same broker")
    parser.add_argument("--broker", help="host:port of a running broker (plain only)")
    parser.add_argument("--pid", type=int, help="pid of that broker (for RSS and CPU)")
    parser.add_argument("--system", action="append", default=[], metavar="KEY=VALUE",
                        help="a [system] line for the broker's server.ini (repeatable), "
                             "e.g. fsyncMethod=thread")
    return parser.parse_args(argv)


if __name__ == "__main__":
    main(parseArguments(sys.argv[1:]))

"""
A stand-in for a gregor slave that does the least a slave can do, to bound
what any slave could let a sync pair reach (C{benchmarks/ha.py
--slave-stub}).

It answers every request it reads (a C{sync} with its body, or any other
one-line command such as the master's C{version} heartbeat) with C{result
200 0 <opaque>}, all the replies of one socket read in one write, and does
nothing else: no checks, no store, no stats, one blocking loop.  With
C{fsync} it first writes the read's bytes to a file in the current
directory, over zeros written before it listens, and C{fdatasync}s it,
inline: about the shortest path from a master's syncs to a durable reply,
where the broker hands its fsync to the kernel or a thread so that its
reactor never blocks.  With
C{none} it answers at once, as if the slave cost nothing.

It listens on 127.0.0.1 only.  Not a broker: the data it writes cannot be
read back, and a malformed request ends it.

    python benchmarks/stubslave.py PORT {none,fsync}
"""

import os
import selectors
import socket
import sys

from metamorphosis.broker.store.zeros import writeZeros


def requests(buffer):
    """
    The opaques of the whole requests at the start of C{buffer}, and the
    length of those requests.
    """
    opaques, position = [], 0
    while True:
        end = buffer.find(b"\r\n", position)
        if end < 0:
            return opaques, position
        words = buffer[position:end].split(b" ")
        following = end + 2
        if words[0] == b"sync":
            # sync TOPIC PARTITION LENGTH FLAG MSGID CHECKSUM OPAQUE
            following += int(words[3])
            if following > len(buffer):
                return opaques, position
        opaques.append(words[-1])
        position = following


#: The stub's file: written with zeros before it serves, then overwritten
#: from its start again and again, as the broker writes over the zeros it
#: keeps ahead of its records (C{preallocateSize}): an fdatasync then
#: commits no new file size, which on ext4 makes it about a third faster.
_LOG_SIZE = 64 * 1024 * 1024


def _zeroedLog(path):
    log = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    writeZeros(log, 0, _LOG_SIZE)
    os.fsync(log)
    return log


def serve(port, durable):
    log = _zeroedLog("stub.log") if durable else None
    position = 0
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", port))
    listener.listen(16)
    selector = selectors.DefaultSelector()
    selector.register(listener, selectors.EVENT_READ)
    pending = {}
    while True:
        for key, _ in selector.select():
            connection = key.fileobj
            if connection is listener:
                accepted, _ = listener.accept()
                accepted.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                selector.register(accepted, selectors.EVENT_READ)
                pending[accepted] = b""
                continue
            data = connection.recv(1 << 20)
            if not data:
                selector.unregister(connection)
                connection.close()
                del pending[connection]
                continue
            buffer = pending[connection] + data
            opaques, used = requests(buffer)
            pending[connection] = buffer[used:]
            if not opaques:
                continue
            if log is not None:
                if position + used > _LOG_SIZE:
                    position = 0
                position += os.pwrite(log, buffer[:used], position)
                os.fdatasync(log)
            connection.sendall(b"".join(b"result 200 0 %s\r\n" % (opaque,) for opaque in opaques))


if __name__ == "__main__":
    serve(int(sys.argv[1]), {"none": False, "fsync": True}[sys.argv[2]])

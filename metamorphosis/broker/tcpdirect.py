"""
Writing straight to the socket of a plain TCP transport.

For a stream of small put replies, one C{send} on the spot costs much less
than Twisted's write buffer (an C{epoll} registration for writing and a
later reactor iteration), and a C{get} reply goes out with C{sendfile},
which needs the socket itself.  Both are only allowed while the transport
has nothing buffered (the bytes would otherwise overtake it), and Twisted
has no public way to ask that.  This module is the only place that reads
Twisted's private transport attributes (C{FileDescriptor.dataBuffer},
C{_tempDataLen}, C{offset}, C{producerPaused}); C{tests/broker/test_tcpdirect.py}
fails loudly when a Twisted upgrade changes them.
"""

from twisted.internet import abstract, tcp

#: The attributes of L{abstract.FileDescriptor} read or set here.
PRIVATE_ATTRIBUTES = ("dataBuffer", "_tempDataLen", "offset", "producerPaused")


def directSocket(transport):
    """
    The socket of C{transport} when it is plain TCP (not TLS, not a test
    transport), else L{None}.
    """
    if isinstance(transport, tcp.Connection) and isinstance(transport, abstract.FileDescriptor):
        return transport.socket
    return None


def isIdle(transport):
    """
    Whether the TCP transport has written everything it buffered, so that
    bytes sent straight to its socket keep their order.
    """
    return transport._tempDataLen == 0 and transport.offset == len(transport.dataBuffer)


def writeNow(transport, data):
    """
    Send C{data} straight to the socket when nothing is buffered before it;
    what the socket does not take goes through the transport as usual.
    """
    if isIdle(transport):
        try:
            sent = transport.socket.send(data)
        except OSError:
            # Full (BlockingIOError), or broken: the transport notices the
            # broken connection itself.
            sent = 0
        if sent == len(data):
            return
        data = data[sent:]
    transport.write(data)


def awaitWritable(transport):
    """
    Ask C{transport} to resume its (paused) streaming producer once its
    buffer is empty and the socket writable again (what
    C{FileDescriptor.doWrite} does for a producer it paused itself).
    """
    transport.producerPaused = True
    transport.startWriting()

"""
The captures of the real Java MetaQ client and broker that the tests compare
against, kept in this repository under C{tests/data/transcripts/}:

  - C{manifest.json}: the recorded scenarios, in the order they were
    recorded, and the broker configuration each ran against;
  - C{raw/<scenario>.jsonl}: one JSON object a line, either an event
    (C{{"t", "conn", "event"}}: a connection opened or closed) or a chunk of
    bytes as one C{read()} returned it (C{{"t", "conn", "dir", "b64"}}, with
    C{dir} C{"C->S"} from client to broker or C{"S->C"});
  - C{conf/<config>/}: the C{server.ini} (and replication C{.properties})
    files the Java brokers were started with;
  - C{zk/}: dumps of the ZooKeeper tree the Java broker wrote.

Setting C{$METAQ_TRANSCRIPTS} to another directory of the same layout (a
newer recording, say) makes the tests use that one instead.
"""

import base64
import json
import os
from dataclasses import dataclass
from pathlib import Path

#: The repository's copy of the captures.
BUNDLED = Path(__file__).resolve().parent / "data" / "transcripts"


def capturesDirectory() -> Path:
    """
    C{$METAQ_TRANSCRIPTS} if set, else the repository's own copy.
    """
    return Path(os.environ.get("METAQ_TRANSCRIPTS") or BUNDLED)


def capturePath(*parts) -> Path:
    """
    A file of the captures, e.g. C{capturePath("conf", "broker", "server.ini")}.
    """
    return capturesDirectory().joinpath(*parts)


def manifest() -> dict:
    """
    The parsed C{manifest.json}.
    """
    with capturePath("manifest.json").open(encoding="utf-8") as f:
        return json.load(f)


@dataclass(frozen=True)
class Event:
    """
    One line of a capture.

    @ivar time: seconds since the recording started.
    @ivar connection: the connection's number within the scenario (from 1).
    @ivar kind: C{"C->S"} or C{"S->C"} for bytes; C{"open"}, C{"client-close"}
        (the client shut down its sending side), C{"broker-close"} or
        C{"end"} for events; C{"note"} for anything else.
    @ivar data: the bytes of a C{"C->S"}/C{"S->C"} chunk, else L{None}.
    """

    time: float
    connection: int
    kind: str
    data: bytes | None = None


def _eventKind(text):
    if "connected, forwarding" in text:
        return "open"
    if text.startswith("C->S closed"):
        return "client-close"
    if text.startswith("S->C closed"):
        return "broker-close"
    if text == "proxy stopped":
        return "end"
    return "note"


def readEvents(path: Path) -> list[Event]:
    """
    Every event and chunk of one C{raw/*.jsonl} capture, in recorded order.
    """
    events = []
    with path.open(encoding="utf-8") as lines:
        for line in lines:
            if not line.strip():
                continue
            item = json.loads(line)
            if "dir" in item:
                events.append(Event(item["t"], item["conn"], item["dir"], base64.b64decode(item["b64"])))
            else:
                events.append(Event(item["t"], item["conn"], _eventKind(item["event"])))
    return events


def recordedStreams(path: Path) -> dict[tuple[int, str], bytes]:
    """
    Each connection's whole C->S and S->C byte streams of one capture,
    keyed by C{(connection, direction)}.
    """
    streams: dict[tuple[int, str], bytearray] = {}
    for event in readEvents(path):
        if event.data is not None:
            streams.setdefault((event.connection, event.kind), bytearray()).extend(event.data)
    return {key: bytes(stream) for key, stream in streams.items()}

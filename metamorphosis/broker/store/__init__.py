"""
The message store: segmented partition logs, flushing, recovery and retention.

See docs/storage.md.
"""

from metamorphosis.broker.store.errors import (
    CorruptRecord,
    IllegalTopic,
    OffsetBeforeStart,
    OffsetMismatch,
    StoreClosed,
    WrongPartition,
)
from metamorphosis.broker.store.interfaces import IDeletePolicy, IMessageStore
from metamorphosis.broker.store.manager import MessageStoreManager
from metamorphosis.broker.store.partition import MessageStore
from metamorphosis.broker.store.segment import MessageSlice, nameFromOffset

__all__ = [
    "CorruptRecord",
    "IDeletePolicy",
    "IMessageStore",
    "IllegalTopic",
    "MessageSlice",
    "MessageStore",
    "MessageStoreManager",
    "OffsetBeforeStart",
    "OffsetMismatch",
    "StoreClosed",
    "WrongPartition",
    "nameFromOffset",
]

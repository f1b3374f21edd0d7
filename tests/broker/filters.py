"""
Server-side consumer filters used by the tests (named in configs by
dotted path).
"""

from zope.interface import implementer

from metamorphosis.broker.interfaces import IMessageFilter


@implementer(IMessageFilter)
class EvenIds:
    """
    Accepts messages with an even id.
    """

    def accept(self, group, message):
        return message.id % 2 == 0


@implementer(IMessageFilter)
class DataStartsWithKeep:
    """
    Accepts messages whose data starts with C{keep}; raises for C{boom}.
    """

    def accept(self, group, message):
        if message.data.startswith(b"boom"):
            raise RuntimeError("boom")
        return message.data.startswith(b"keep")


rejectAll = type("RejectAll", (), {"accept": lambda self, group, message: False})

"""
Hypothesis strategies for every command, shaped like what Java peers send.
"""

from hypothesis import strategies as st

from metamorphosis.protocol.commands import (
    TRANSACTION_TYPES,
    GetCommand,
    OffsetCommand,
    PutCommand,
    QuitCommand,
    ResultCommand,
    StatsCommand,
    SyncCommand,
    TransactionCommand,
    ValueCommand,
    VersionCommand,
)
from metamorphosis.protocol.javalang import isJavaBlank
from metamorphosis.protocol.txid import (
    NULL_TRANSACTION_ID,
    LocalTransactionId,
    XATransactionId,
)

int32 = st.integers(-(2**31), 2**31 - 1)
int64 = st.integers(-(2**63), 2**63 - 1)
bodies = st.binary(max_size=300)

# A token: any UTF-8 encodable text without spaces or line breaks.
tokens = st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters=" \r\n"),
    min_size=1,
    max_size=20,
)
# A token that is not blank in the commons-lang sense.
nonBlankTokens = tokens.filter(lambda token: not isJavaBlank(token))
# A qualifier that the 6-token transaction form does not take for a timeout.
nonNumericTokens = nonBlankTokens.filter(
    lambda token: not all(character.isdecimal() for character in token)
)

localIds = st.builds(
    LocalTransactionId,
    tokens.filter(lambda token: ":" not in token),
    int32,
)
xaIds = st.builds(
    XATransactionId,
    int32,
    st.binary(max_size=16),
    st.binary(max_size=16),
    st.text(
        st.characters(blacklist_categories=("Cs",), blacklist_characters=" \r\n:"),
        max_size=20,
    ),
)
transactionIds = st.one_of(localIds, xaIds, st.just(NULL_TRANSACTION_ID))
transactionKeys = transactionIds.map(lambda transactionId: transactionId.key)


def _transactionCommand(key, session, kind, opaque, timeout, qualifier):
    if timeout == 0 and qualifier is not None:
        # Without a timeout a purely numeric qualifier reads as one (Java).
        qualifier = qualifier if not qualifier.isdecimal() else None
    return TransactionCommand(key, session, kind, opaque, timeout, qualifier)


putCommands = st.builds(
    PutCommand,
    tokens,
    int32,
    bodies,
    int32,
    int32,
    int32,
    st.none() | transactionKeys,
)
getCommands = st.builds(GetCommand, tokens, tokens, int32, int64, int32, int32)
offsetCommands = st.builds(OffsetCommand, tokens, tokens, int32, int64, int32)
statsCommands = st.builds(StatsCommand, st.just("") | nonBlankTokens, int32)
versionCommands = st.builds(VersionCommand, int32)
quitCommands = st.just(QuitCommand())
transactionCommands = st.builds(
    _transactionCommand,
    transactionKeys,
    tokens,
    st.sampled_from(TRANSACTION_TYPES),
    int32,
    st.integers(0, 2**31 - 1),
    st.none() | nonNumericTokens,
)
syncCommands = st.builds(SyncCommand, tokens, int32, bodies, int32, int64, int32, int32)
resultCommands = st.builds(ResultCommand, int32, bodies, int32)
valueCommands = st.builds(ValueCommand, bodies, int32)

commands = st.one_of(
    putCommands,
    getCommands,
    offsetCommands,
    statsCommands,
    versionCommands,
    quitCommands,
    transactionCommands,
    syncCommands,
    resultCommands,
    valueCommands,
)

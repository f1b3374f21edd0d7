"""
Transactions: local and XA transactions on the broker, as MetaQ's
C{TransactionalCommandProcessor} runs them, with our own redo journal.

The pieces, from the wire inwards: L{processor} answers C{transaction}
commands and transactional C{put}s; L{transaction} holds the state machine of
one transaction; L{store} makes the transitions durable (journals puts,
prepares, commits and rollbacks, appends committed messages to the partitions,
recovers after a crash) on top of the files of L{journal}; L{admin} lets an
operator complete a prepared transaction heuristically.
"""

"""The Python MetaQ client: producers, consumers, offset storage."""

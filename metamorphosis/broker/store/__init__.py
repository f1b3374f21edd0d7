"""The message store: segmented partition logs, flushing, recovery and retention."""

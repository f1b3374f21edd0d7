"""Master/slave replication (async and sync) and failover."""

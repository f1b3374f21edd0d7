"""The broker: configuration, request handling, statistics, ZooKeeper registration."""

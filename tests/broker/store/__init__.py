"""Tests for metamorphosis.broker.store."""

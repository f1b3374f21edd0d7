"""Tests for metamorphosis."""

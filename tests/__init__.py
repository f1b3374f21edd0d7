"""
Tests for metamorphosis.

The hypothesis profile is the suite's: examples are judged by what they find,
never by how long one took, because the suite runs on small shared machines
(two cores, trial -j2) where any single example can be slow.
"""

from hypothesis import HealthCheck, settings

settings.register_profile(
    "metamorphosis", deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile("metamorphosis")

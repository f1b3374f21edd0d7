"""
The broker's HTTP endpoint: metrics, health probes and the dashboard page.
"""

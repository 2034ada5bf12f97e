"""Test helpers (no tests, no fixtures): stand-in peers, settings, brokers, fault injection."""

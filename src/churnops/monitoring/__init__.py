"""Monitoring: data drift, prediction drift, performance and system metrics (not built yet; a later issue)."""

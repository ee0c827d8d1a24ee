"""Logs and metrics: structlog configuration and the Prometheus series, declared once."""

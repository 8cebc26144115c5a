"""relay: durable alerting for Trigger.dev runs."""

__version__ = "0.1.0"

"""The evpay-agent daemon: composition root, persistence, upstream MQTT, tariff, receipts, CLI."""

__version__ = "0.1.0"

"""Delivery: MX resolution, the SMTP client, reply classification and DSN bounces."""
from __future__ import annotations

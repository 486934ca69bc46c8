"""Sender domains and addresses: the records to publish, DNS verification, status."""
from __future__ import annotations

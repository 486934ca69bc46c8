"""DKIM: key generation, DNS record values, and the signer (bytes → bytes)."""
from __future__ import annotations

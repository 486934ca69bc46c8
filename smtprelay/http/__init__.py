"""The HTTP side: /metrics, /healthz (and later the admin API and tracking endpoints)."""
from __future__ import annotations

"""The durable queue: schema, store (all queue SQL) and queue ids."""
from __future__ import annotations

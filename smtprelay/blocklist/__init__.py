"""The blocklist: typed entries, the allow list, import/export, and feedback intake."""
from __future__ import annotations

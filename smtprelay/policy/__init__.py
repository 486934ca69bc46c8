"""The policy pipeline: pure rules from a typed context to a verdict."""
from __future__ import annotations

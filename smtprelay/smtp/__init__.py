"""The SMTP front end: translates SMTP into a typed context and verdicts into replies."""
from __future__ import annotations

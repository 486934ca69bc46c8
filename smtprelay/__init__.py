"""smtprelay: a self-hosted SMTP relay with policy enforcement."""
from __future__ import annotations

__version__ = "0.1.0"

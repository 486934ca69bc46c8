"""`python -m smtprelay` is the same as the `smtprelay` command."""
from __future__ import annotations

import sys

from smtprelay.cli import main

sys.exit(main())

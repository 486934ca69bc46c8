"""Several relay nodes sharing limits (issue 20): Redis counters."""

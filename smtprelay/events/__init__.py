"""Events: one typed record per state change, and what is built from them (status, statistics)."""

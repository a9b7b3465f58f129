"""The benchmark of the hot paths (slot search, booking, change feed)."""

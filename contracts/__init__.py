"""Event contracts: the single source of every message's shape."""

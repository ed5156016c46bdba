"""Reference applications built on Stoic (importable from the repository root)."""

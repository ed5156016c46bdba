"""Unit tests of the pure core: no database."""

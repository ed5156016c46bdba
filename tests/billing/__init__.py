"""The billing reference domain (examples/billing) on every backend."""

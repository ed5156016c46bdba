"""Reference domains built on Stoic (``stoic.stoic.examples.billing``): readable, tested
examples of aggregates, processes and projections, and the demo's workload."""

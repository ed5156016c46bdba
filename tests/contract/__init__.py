"""The contract suite: what every Store backend must do (run on each via the ``store`` fixture)."""

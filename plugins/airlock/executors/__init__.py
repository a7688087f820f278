"""Executors Airlock's stacks run with (``[core] executor``)."""

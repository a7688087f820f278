"""Listeners Airlock's plugin registers with Airflow (``airlock_plugin.py``)."""

"""The Airlock board: a FastAPI app Airflow's api-server mounts at ``/airlock``.

``app.py`` holds the routes (the JSON API, the board page, ``/metrics``), ``access.py`` Airflow's
own authentication and who may read which environment, ``overview.py`` what the board reads
through ``airlock.hooks``, ``metrics.py`` the Prometheus exposition. The computing is in
``airlock.core.board`` and ``airlock.core.dora``.
"""

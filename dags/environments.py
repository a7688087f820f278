"""Environment files check: every broken ``include/environments/*.yaml`` becomes an import error here.

The DAG files build one DAG per valid environment and skip broken ones, so a typo in
``staging.yaml`` never takes ``release_production`` down. The broken file still has to be seen:
importing this module raises with the file and field of each problem, and Airflow shows that
under "DAG Import Errors". This file defines no DAG.
"""

from __future__ import annotations

from airlock.config import EnvironmentConfigError, load_environments

_broken = load_environments().errors
if _broken:
    raise EnvironmentConfigError(
        f"{len(_broken)} environment file(s) are invalid and their DAGs are not loaded:\n"
        + "\n".join(str(error) for error in _broken.values())
    )

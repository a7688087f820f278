# The image every Airflow service in docker-compose.yaml runs: the official Airflow image plus
# Airlock's dependencies at exactly the versions the tests and CI use. DAGs, plugins, include/ and
# docs/ are mounted by docker-compose.yaml, so changing them needs no rebuild; changing
# requirements.txt or constraints.txt does (`docker compose build`).
FROM apache/airflow:3.3.2-python3.11

# backup_<env> and restore_<env> run pg_dump/pg_restore on the workers. pg_dump must be of the
# database server's major version or newer, so the client comes from the PostgreSQL project's
# own repository (PGDG); raise PG_CLIENT_MAJOR when a server is newer.
ARG PG_CLIENT_MAJOR=17
USER root
RUN apt-get update \
    && apt-get install -y --no-install-recommends postgresql-common \
    && /usr/share/postgresql-common/pgdg/apt.postgresql.org.sh -y \
    && apt-get install -y --no-install-recommends "postgresql-client-${PG_CLIENT_MAJOR}" \
    && apt-get clean && rm -rf /var/lib/apt/lists/*

# The official image wants extra packages installed as the airflow user, next to Airflow itself.
# requirements.txt pins apache-airflow==3.3.2, so pip cannot move Airflow away from the base image's
# version, and constraints.txt pins every transitive dependency.
USER airflow
COPY --chown=airflow:0 requirements.txt constraints.txt /opt/airlock/
RUN pip install --no-cache-dir -r /opt/airlock/requirements.txt -c /opt/airlock/constraints.txt

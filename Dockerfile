# Airflow image for cdp-ingest: the official Airflow 3.3.2 image plus the project's pinned
# requirements and the cdp_ingest package (include/). Built by docker-compose.yaml.
FROM apache/airflow:3.3.2-python3.11

# The official image runs pip as the unprivileged "airflow" user (PIP_USER=true).
COPY requirements.txt /requirements.txt
RUN pip install --no-cache-dir -r /requirements.txt

# Build the project package from a copy the airflow user can write to (setuptools builds
# in-tree), then go back to AIRFLOW_HOME.
USER root
RUN mkdir -p /opt/cdp-ingest && chown airflow:0 /opt/cdp-ingest
USER airflow
WORKDIR /opt/cdp-ingest
COPY --chown=airflow:0 pyproject.toml ./
COPY --chown=airflow:0 include/ ./include/
RUN pip install --no-cache-dir --no-deps .
WORKDIR /opt/airflow

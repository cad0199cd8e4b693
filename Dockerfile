# qualys-collector container, in the layout of the Devo collector documentation:
#   /devo-collector/config/$CONFIG_FILE   /devo-collector/certs/   /devo-collector/credentials/   /devo-collector/state/
# BASE: the official image by default; CI builds FROM a local stand-in when the official one cannot be pulled.
ARG BASE=python:3.11-slim

# Build stage: a virtual environment from the hashed lock (pip refuses anything whose hash differs), then the
# package itself without dependencies. Only the finished environment reaches the final image: no wheels, no pip
# cache, no compiler.
FROM ${BASE} AS build
RUN python3 -m venv /opt/qualys-collector
COPY docker/requirements.lock /tmp/requirements.lock
RUN /opt/qualys-collector/bin/pip install --no-cache-dir --require-hashes --only-binary=:all: -r /tmp/requirements.lock
COPY pyproject.toml README.md /src/
COPY src /src/src
RUN /opt/qualys-collector/bin/pip install --no-cache-dir --no-deps /src \
 && /opt/qualys-collector/bin/pip uninstall -y -q pip

FROM ${BASE}
RUN useradd --uid 10001 --user-group --no-create-home --home-dir /devo-collector collector \
 && mkdir -p /devo-collector/config /devo-collector/certs /devo-collector/credentials /devo-collector/state \
 && chown collector:collector /devo-collector/state && chmod 0700 /devo-collector/state
COPY --from=build /opt/qualys-collector /opt/qualys-collector
COPY docker/entrypoint.sh /usr/local/bin/qualys-collector-entrypoint
USER collector
WORKDIR /devo-collector
ENV CONFIG_FILE=config.yaml COLLECTOR_ROOT=/devo-collector PYTHONUNBUFFERED=1 PATH=/opt/qualys-collector/bin:$PATH
VOLUME ["/devo-collector/state"]
ENTRYPOINT ["qualys-collector-entrypoint"]

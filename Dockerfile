# qualys-collector container, in the layout of the Devo collector documentation:
#   /devo-collector/config/$CONFIG_FILE   /devo-collector/certs/   /devo-collector/state/
# Build stage: wheels for the package and its pinned dependencies (no compiler reaches the final image).
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
COPY docker/requirements.lock ./requirements.lock
RUN pip wheel --no-cache-dir --wheel-dir /wheels -r requirements.lock \
 && pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

FROM python:3.11-slim
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-index --find-links /wheels qualys-collector \
 && rm -rf /wheels \
 && useradd --uid 10001 --user-group --no-create-home --home-dir /devo-collector collector \
 && mkdir -p /devo-collector/config /devo-collector/certs /devo-collector/state \
 && chown collector:collector /devo-collector/state && chmod 0700 /devo-collector/state
COPY docker/entrypoint.sh /usr/local/bin/qualys-collector-entrypoint
USER collector
WORKDIR /devo-collector
ENV CONFIG_FILE=config.yaml COLLECTOR_ROOT=/devo-collector PYTHONUNBUFFERED=1
VOLUME ["/devo-collector/state"]
ENTRYPOINT ["qualys-collector-entrypoint"]

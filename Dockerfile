# One image for every dagwire process: the store, dispatcher and orchestrator services and the
# toolbox adapter. docker-compose.yml picks the process with its `command`, e.g.
#   python -m dagwire_services.store
# Build: docker build -t dagwire:0.1.0 .
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1

WORKDIR /app

# Dependencies first (a layer that changes only with the lock): every package pinned by hash.
COPY requirements.lock ./
RUN pip install --require-hashes -r requirements.lock

# Then the project itself (no dependency resolution: the lock already installed them all;
# no build isolation: setuptools comes from the lock too, so nothing unpinned is fetched).
COPY pyproject.toml README.md ./
COPY dagwire ./dagwire
COPY services ./services
COPY clients/python ./clients/python
RUN pip install --no-deps --no-build-isolation . \
    && useradd --system --uid 10001 --home-dir /data --create-home dagwire

USER dagwire
WORKDIR /data
ENV DAGWIRE_DATA_DIR=/data \
    DAGWIRE_LOG_FORMAT=json

# orchestrator, dispatcher, store, toolbox (docs/contracts.md §1)
EXPOSE 50051 50052 50053 50060

CMD ["python", "-m", "dagwire_services.orchestrator"]

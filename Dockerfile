# syntax=docker/dockerfile:1
# Reactive ML in a container: `rml start --foreground`. The keeper is PID 1: it handles
# SIGTERM (drains the actors, leaves no process, exits 0), reaps orphans (it is a child
# subreaper) and writes JSON log lines to stdout (`docker logs`). Give it longer than
# Docker's default 10 s to drain: `docker run --stop-timeout 60` (compose.yaml does).
#
#   docker build -t reactive-ml .
#   docker run -d --name rml --stop-timeout 60 -p 8471:8471 -p 8472:8472 -p 8473:8473 \
#       -e RML_INGEST_TOKENS=... -e RML_PREDICT_TOKENS=... -v rml-data:/var/lib/rml reactive-ml

# Wheels of the project and of every dependency, built from the project's own files.
FROM python:3.11-slim AS wheels
WORKDIR /src
COPY . .
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    RML_CONFIG=/etc/rml/rml.toml
RUN --mount=type=bind,from=wheels,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-index --find-links=/wheels reactive-ml
# A user of its own; the data directory (stores, logs, run record) is its volume.
RUN useradd --system --user-group --uid 10001 --home-dir /var/lib/rml --no-create-home \
        --shell /usr/sbin/nologin rml \
    && install -d -o rml -g rml -m 0750 /var/lib/rml
COPY deploy/rml-container.toml /etc/rml/rml.toml
USER rml
WORKDIR /var/lib/rml
VOLUME ["/var/lib/rml"]
# ingest, predict, metrics (HTTP, bearer tokens). Thespian's admin port stays on the
# container's loopback and is never published.
EXPOSE 8471 8472 8473
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-I", "-c", "import sys, urllib.request; from config.settings import load_settings; port = load_settings().predict.port; sys.exit(urllib.request.urlopen(f'http://127.0.0.1:{port}/health', timeout=4).status != 200)"]
CMD ["rml", "start", "--foreground"]

# syntax=docker/dockerfile:1
# relay: build wheels in one stage, install them into a venv in a slim final stage (no build
# tools, no pip cache), run as a non-root user. Usage: README.md, "Docker".
ARG PYTHON_IMAGE=python:3.11.9-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY relay ./relay
COPY templates ./templates
# relay's wheel (templates included as relay/templates), then wheels of its dependencies and of
# the `fast` extra (uvloop).
RUN pip wheel --no-deps -w /wheels . \
 && pip wheel -w /wheels /wheels/relay-*.whl uvloop

FROM ${PYTHON_IMAGE}
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/venv/bin:$PATH \
    RELAY_CONFIG=/etc/relay/config.yaml \
    RELAY_STORE_URL=sqlite:////var/lib/relay/relay.db \
    RELAY_LISTEN=0.0.0.0:8080
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    python -m venv /opt/venv \
 && /opt/venv/bin/pip install --no-cache-dir --disable-pip-version-check --no-index \
    --find-links=/wheels "relay[fast]" \
 && groupadd --system --gid 10001 relay \
 && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/relay --no-create-home \
    --shell /usr/sbin/nologin relay \
 && mkdir -p /etc/relay /var/lib/relay /app \
 && chown 10001:10001 /var/lib/relay
COPY config.example.yaml /etc/relay/config.yaml
WORKDIR /app
USER 10001:10001
VOLUME ["/etc/relay", "/var/lib/relay"]
EXPOSE 8080
# /healthz (liveness) answers from the start, also while relay waits for its database: an
# orchestrator that restarts unhealthy containers leaves it waiting; /readyz says when it serves.
# No curl in slim images: probe /healthz with the standard library, on RELAY_LISTEN's port
# (empty: relay's default; brackets around any host, [127.0.0.1] or [], as relay reads it).
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; host, _, port = (os.environ.get('RELAY_LISTEN', '').strip() or '0.0.0.0:8080').rpartition(':'); host = host.strip('[]'); host = {'': '127.0.0.1', '0.0.0.0': '127.0.0.1', '::': '::1'}.get(host, host); host = f'[{host}]' if ':' in host else host; urllib.request.urlopen(f'http://{host}:{port}/healthz', timeout=4)"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["relay"]
CMD ["serve"]

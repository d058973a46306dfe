# syntax=docker/dockerfile:1
# Build stage: compiles the `arosaje` binary (migrations are embedded in it). The registry and
# target directories are BuildKit caches, so a rebuild after a source change recompiles our crate,
# not every dependency.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY migrations ./migrations
COPY benches ./benches
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin arosaje \
    && cp target/release/arosaje /usr/local/bin/arosaje

# Web stage: the web app (web/) built to static files, which the API serves at / (WEB_DIR).
FROM node:20-bookworm-slim AS web
WORKDIR /web
COPY web/package.json web/package-lock.json ./
RUN npm ci --no-audit --no-fund --loglevel=error --ignore-scripts
COPY web/ ./
RUN npx nuxt prepare && npm run generate

# Runtime stage: a small image with the binary only, run as an unprivileged user (by number, so
# an orchestrator can check `runAsNonRoot` without reading /etc/passwd).
FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 arosaje \
    && useradd --system --uid 10001 --gid 10001 --no-create-home arosaje \
    && mkdir -p /var/lib/arosaje/photos && chown 10001:10001 /var/lib/arosaje/photos
COPY --from=build /usr/local/bin/arosaje /usr/local/bin/arosaje
COPY --from=web /web/.output/public /usr/share/arosaje/web
USER 10001:10001
ENV BIND_ADDR=0.0.0.0:8000 RUST_LOG=info STORAGE_DIR=/var/lib/arosaje/photos \
    WEB_DIR=/usr/share/arosaje/web
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s CMD curl -fsS http://127.0.0.1:8000/health || exit 1
ENTRYPOINT ["arosaje"]
CMD ["serve"]

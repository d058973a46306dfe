# Build stage: compiles the `arosaje` binary (migrations are embedded in it).
FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY migrations ./migrations
COPY benches ./benches
RUN cargo build --release --locked --bin arosaje

# Runtime stage: a small image with the binary only.
FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 arosaje \
    && mkdir -p /var/lib/arosaje/photos && chown arosaje /var/lib/arosaje/photos
COPY --from=build /src/target/release/arosaje /usr/local/bin/arosaje
USER arosaje
ENV BIND_ADDR=0.0.0.0:8000 RUST_LOG=info STORAGE_DIR=/var/lib/arosaje/photos
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s CMD curl -fsS http://127.0.0.1:8000/health || exit 1
ENTRYPOINT ["arosaje"]
CMD ["serve"]

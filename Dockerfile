# syntax=docker/dockerfile:1
# hookrelay: one image for every subcommand (dispatch, aggregate, receiver, produce, …).
#   docker build -t hookrelay .
#   docker run --rm hookrelay --help

# --- build: librdkafka is compiled from source by rdkafka-sys (C toolchain, make, OpenSSL headers) ---
FROM rust:1-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential pkg-config libssl-dev zlib1g-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
# .cargo/config.toml sets jemalloc's purge interval, built into the binary.
COPY .cargo .cargo
COPY src src
COPY schemas schemas
COPY benches benches
COPY hookrelay.example.toml ./
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin hookrelay \
 && cp target/release/hookrelay /usr/local/bin/hookrelay

# --- runtime: glibc, OpenSSL, zlib and CA certificates; nothing else, and no root ---
FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates libssl3 zlib1g \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --user-group --home-dir /var/lib/hookrelay --create-home hookrelay
COPY --from=build /usr/local/bin/hookrelay /usr/local/bin/hookrelay
COPY hookrelay.example.toml /etc/hookrelay/hookrelay.example.toml
USER 10001:10001
WORKDIR /var/lib/hookrelay
# /metrics, /healthz and /readyz ([telemetry].listen)
EXPOSE 9090
ENTRYPOINT ["/usr/local/bin/hookrelay"]
CMD ["dispatch"]

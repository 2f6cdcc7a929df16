# Portico's images. `make image` builds both:
#   portico       the controller and DNS server: a static binary on a
#                 distroless base, running as a non-root user (65532);
#   portico-node  the node agent: the same binary with nft and conntrack,
#                 which it runs to program the node (NET_ADMIN and NET_RAW).
#
#   docker build --target portico -t portico:dev .
#   docker build --target portico-node -t portico-node:dev .

FROM rust:1.95-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends musl-tools \
    && rm -rf /var/lib/apt/lists/* \
    && rustup target add x86_64-unknown-linux-musl
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin portico --target x86_64-unknown-linux-musl \
    && cp target/x86_64-unknown-linux-musl/release/portico /portico \
    && /portico --version

FROM gcr.io/distroless/static-debian12:nonroot AS portico
COPY --from=build /portico /usr/local/bin/portico
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/portico"]

FROM debian:bookworm-slim AS portico-node
RUN apt-get update \
    && apt-get install -y --no-install-recommends nftables conntrack iproute2 \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /portico /usr/local/bin/portico
ENTRYPOINT ["/usr/local/bin/portico"]

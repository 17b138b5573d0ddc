# syntax=docker/dockerfile:1
# The `wellspring` binary in a minimal image (deploy/README.md). Build from the
# repository's root:
#   docker build -t ghcr.io/wellspring/wellspring:0.1.0 .
# The runtime image has the binary and nothing else (no shell, no package manager); it
# runs as the distroless "nonroot" user, 65532:65532, the uid/gid the Kubernetes
# manifests (deploy/base/statefulset.yaml) require; tests/deploy.rs checks they agree.

# --- build ---------------------------------------------------------------------------
FROM rust:1-bookworm AS build
# librdkafka and OpenSSL are built from source (rdkafka-sys, vendored): they need make,
# perl and a C/C++ toolchain, which the rust image has; cmake is for its cmake-build feature.
RUN apt-get update \
    && apt-get install -y --no-install-recommends cmake \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin wellspring \
    && install -D -m 0755 target/release/wellspring /out/wellspring

# --- runtime -------------------------------------------------------------------------
# glibc, libgcc/libstdc++, CA certificates and tzdata; nothing else.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/wellspring /usr/local/bin/wellspring
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/wellspring"]
CMD ["--help"]

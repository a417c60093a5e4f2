# syntax=docker/dockerfile:1
# Build: the same release build `make release` runs (and `make test` checks).
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
RUN cargo build --release --locked --bin upload-grant-operator \
 && strip target/release/upload-grant-operator

# Run: glibc, CA certificates and nothing else; numeric non-root user.
# `make image` builds this stage without a container engine from Debian 12
# packages (tools/image/); tests/image.rs fails when the two drift.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/upload-grant-operator /usr/local/bin/upload-grant-operator
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/upload-grant-operator"]

# syntax=docker/dockerfile:1
# The base images, by tag. Pin them by digest for a build that cannot change
# under you, e.g.
#   docker build --build-arg RUST_IMAGE=rust:1.95-bookworm@sha256:<digest> \
#     --build-arg RUNTIME_IMAGE=gcr.io/distroless/cc-debian12:nonroot@sha256:<digest> .
# (`docker buildx imagetools inspect IMAGE` prints an image's digest.)
ARG RUST_IMAGE=rust:1.95-bookworm
ARG RUNTIME_IMAGE=gcr.io/distroless/cc-debian12:nonroot

# Build: the same release build `make release` runs (and `make test` checks).
FROM ${RUST_IMAGE} AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
RUN cargo build --release --locked --bin upload-grant-operator \
 && strip target/release/upload-grant-operator

# Run: glibc, CA certificates and nothing else; numeric non-root user.
# `make image` builds this stage without a container engine from Debian 12
# packages (tools/image/); tests/image.rs fails when the two drift.
FROM ${RUNTIME_IMAGE}
COPY --from=build /src/target/release/upload-grant-operator /usr/local/bin/upload-grant-operator
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/upload-grant-operator"]

# tally: one image for every role (edge, writer, query node); the role is
# the command line. Build: docker build -t tally .
FROM rust:1.95-bookworm AS build
WORKDIR /src
# librdkafka is built from source by rdkafka-sys (needs make, a C compiler
# and OpenSSL's headers, all in this image); protobuf code is generated in
# Rust (no protoc).
COPY . .
RUN cargo build --release --bin tally \
    && install -D target/release/tally /out/tally

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates libssl3 \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --home /var/lib/tally --create-home tally \
    && install -d -o tally -g tally /var/lib/tally/data /var/lib/tally/state
COPY --from=build /out/tally /usr/local/bin/tally
USER tally
WORKDIR /var/lib/tally
EXPOSE 8081
ENTRYPOINT ["tally"]
CMD ["serve", "--listen", "0.0.0.0:8081", "--data", "/var/lib/tally/data"]

# syntax=docker/dockerfile:1

# Stage 1: build navigator.
FROM rust:1-bookworm AS build
WORKDIR /build
COPY . .
# Cache mounts keep the crates.io downloads and compiled dependencies
# between builds on the same builder, which a dummy-source layer would do
# only until Cargo.toml names a bench or test file that it lacks. The binary
# is copied out because the target mount is gone after this step.
RUN --mount=type=cache,id=navigator-cargo-registry,target=/usr/local/cargo/registry \
    --mount=type=cache,id=navigator-target,target=/build/target \
    cargo build --release --locked \
 && cp target/release/navigator /usr/local/bin/navigator

# Stage 2: a Ruby image with the stand-in app where the Showcase image has
# its Rails app. Both stages are bookworm, so the binary finds the glibc it
# was linked against.
FROM ruby:3.3-slim-bookworm

# Puma builds a C extension, so the compiler is installed only for the gem
# install and removed in the same layer. The sqlite3 gem ships precompiled
# for x86_64 and aarch64 Linux with SQLite bundled.
# NOTE: bin/server was tried with Puma 5.6 only; Puma 6 is assumed to keep
# the same command-line options.
RUN apt-get update -qq \
 && apt-get install -y --no-install-recommends build-essential \
 && gem install --no-document puma -v '~> 6.4' \
 && gem install --no-document sqlite3 -v '~> 2.1' \
 && apt-get purge -y --auto-remove build-essential \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /rails
COPY examples/rack/ /rails/
COPY config/ /rails/config/
COPY --from=build /usr/local/bin/navigator /usr/local/bin/navigator

EXPOSE 9999
# Tenant databases (DB_DIR defaults to /data/db in the full config).
VOLUME /data

ENTRYPOINT ["navigator"]
# Boot into the maintenance config, which answers every request at once
# (health checks included). Its ready hook, script/ready.sh, writes
# config/navigator.toml and navigator reloads into it.
CMD ["--config", "config/navigator-maintenance.toml"]

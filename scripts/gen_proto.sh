#!/usr/bin/env bash
# Regenerate the protobuf and grpclib modules from the .proto files beside them.
# Usage: scripts/gen_proto.sh [OUT_DIR]   (default: in place; CI generates into a temp dir and diffs)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
venv_bin=${VENV_BIN:-$root/.venv/bin}

out=${1:-$root/src}
mkdir -p "$out"
cd "$root/src"
# protoc finds its plugins (protoc-gen-grpclib_python, protoc-gen-mypy) on PATH.
PATH="$venv_bin:$PATH" "$venv_bin/python" -m grpc_tools.protoc \
  --proto_path=. \
  --python_out="$out" --mypy_out="$out" --grpclib_python_out="$out" \
  skyflow_vault_plugin/sdk/plugin/pb/*.proto

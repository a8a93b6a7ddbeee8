#!/usr/bin/env bash
# Regenerate the SDK's protobuf and grpclib modules from the .proto files beside them
# (sdk/src/vault_plugin_sdk/plugin/pb; see the README there for where the .proto files come from).
# Usage: scripts/gen_proto.sh [OUT_DIR]   (default: in place; CI generates into a temp dir and diffs)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
venv_bin=${VENV_BIN:-$root/.venv/bin}

out=${1:-$root/sdk/src}
mkdir -p "$out"
cd "$root/sdk/src"
# protoc finds its plugins (protoc-gen-grpclib_python, protoc-gen-mypy) on PATH.
PATH="$venv_bin:$PATH" "$venv_bin/python" -m grpc_tools.protoc \
  --proto_path=. \
  --python_out="$out" --mypy_out="$out" --grpclib_python_out="$out" \
  vault_plugin_sdk/plugin/pb/*.proto

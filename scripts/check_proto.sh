#!/usr/bin/env bash
# Regenerate the protobuf modules into a scratch folder and compare with the committed ones.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
"$root/scripts/gen_proto.sh" "$scratch" >/dev/null
pb=vault_plugin_sdk/plugin/pb
status=0
for generated in "$scratch/$pb"/*; do
  name=$(basename "$generated")
  if ! cmp -s "$generated" "$root/sdk/src/$pb/$name"; then
    echo "generated file out of date: sdk/src/$pb/$name (run: make proto)" >&2
    status=1
  fi
done
exit $status

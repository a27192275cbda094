#!/usr/bin/env bash
# Build the firmware image: target/x86_64-unknown-none/release/umbra.
set -euo pipefail
source "$(dirname "$0")/common.sh"
build_image
echo "$UMBRA_IMAGE"

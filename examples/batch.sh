#!/usr/bin/env bash
# Quantize every PNG and JPEG in a folder, one colorquant call per file, as in any for loop.
#
#   examples/batch.sh SRC_DIR OUT_DIR [K]
#
# A failed file is reported and the loop goes on; the exit status is 1 if any file failed.
# (For many files, one call is faster: colorquant SRC_DIR/* -k K --out-dir OUT_DIR.)
set -euo pipefail

src=${1:?usage: batch.sh SRC_DIR OUT_DIR [K]}
out=${2:?usage: batch.sh SRC_DIR OUT_DIR [K]}
k=${3:-16}
colorquant=${COLORQUANT:-colorquant}

mkdir -p "$out"
shopt -s nullglob nocaseglob
failed=0
for f in "$src"/*.png "$src"/*.jpg "$src"/*.jpeg; do
    name=$(basename "$f")
    if ! "$colorquant" "$f" -k "$k" -q -o "$out/${name%.*}.png"; then
        echo "failed: $f" >&2
        failed=1
    fi
done
exit "$failed"

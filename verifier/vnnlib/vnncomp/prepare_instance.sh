#!/usr/bin/env bash
# VNN-COMP prepare_instance.sh for popqorn: prepare_instance.sh v1 CATEGORY ONNX_FILE VNNLIB_FILE
# Loads the model and reads the property (nothing is solved, nothing is timed); exits non-zero,
# with popqorn's one-line reason on stderr, when popqorn cannot take the instance, so the
# harness skips it. Gzipped benchmark files (FILE.gz beside a missing FILE) are unpacked first.
# POPQORN names the command (default: popqorn on PATH).
set -u
if [ "$#" -ne 4 ] || [ "$1" != "v1" ]; then
    echo "usage: $0 v1 CATEGORY ONNX_FILE VNNLIB_FILE" >&2
    exit 1
fi
ONNX_FILE=$3
VNNLIB_FILE=$4
for file in "$ONNX_FILE" "$VNNLIB_FILE"; do
    if [ ! -f "$file" ] && [ -f "$file.gz" ]; then
        gunzip -k "$file.gz" || exit 1
    fi
done
${POPQORN:-popqorn} vnnlib "$ONNX_FILE" "$VNNLIB_FILE" --prepare

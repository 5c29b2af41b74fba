#!/usr/bin/env bash
# VNN-COMP run_instance.sh for popqorn: run_instance.sh v1 CATEGORY ONNX_FILE VNNLIB_FILE RESULTS_FILE TIMEOUT
# Writes RESULTS_FILE: sat (with the counterexample ((X_0 v) ... (Y_0 v) ...)), unsat, unknown or
# timeout; popqorn answers within TIMEOUT + 1 s of its start. When popqorn refuses the instance
# (exit code non-zero, one-line reason on stderr) the file says `error`. Always exits 0.
# POPQORN names the command (default: popqorn on PATH).
set -u
if [ "$#" -ne 6 ] || [ "$1" != "v1" ]; then
    echo "usage: $0 v1 CATEGORY ONNX_FILE VNNLIB_FILE RESULTS_FILE TIMEOUT" >&2
    exit 1
fi
ONNX_FILE=$3
VNNLIB_FILE=$4
RESULTS_FILE=$5
TIMEOUT=$6
if ! ${POPQORN:-popqorn} vnnlib "$ONNX_FILE" "$VNNLIB_FILE" --timeout "$TIMEOUT" --out "$RESULTS_FILE" > /dev/null; then
    echo error > "$RESULTS_FILE"
fi
exit 0

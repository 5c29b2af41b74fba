"""One GRU and one LSTM, each exported from identical weights by torch legacy, torch dynamo, a torch
cell loop, Keras 2 and Keras 3 (tests/fixtures/exporters): the certified radius per exporter without
the canonical pass (the graph as the exporter wrote it) and with it (verifier.canonical, what
`parsers.load_onnx` returns). With the pass the five radii should agree to rounding.

Then the measurement behind verifier.canonical.GRU_UPDATE_FORM: the mean radius of a few GRUs with
the update written z*h + (1 - z)*n with one gate node z ("complement"), sigmoid(-u)*n + sigmoid(u)*h
("gates") or n + sigmoid(u)*(h - n) ("difference").

    python -m benchmarks.exporters [--samples 5] [--methods crown,popqorn] [--dtypes float64,float32]
                                   [--out benchmarks/results/exporters.json]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import time
from pathlib import Path
from unittest import mock

import numpy as np
import torch

import parsers
from parsers import builder
from verifier.canonical import GRU_UPDATE_FORM, GRU_UPDATE_FORMS, canonicalize, describe_products
from verifier.certify import SearchOptions, certify

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures" / "exporters"
GRUS = {"exporters/gru": (FIXTURES / "gru_torch_legacy.onnx", FIXTURES / "samples.npz"),
        "digits_gru_t8_h16": (ROOT / "models_onnx" / "digits_gru_t8_h16.onnx",
                              ROOT / "models_onnx" / "digits_gru_t8_h16.samples.npz"),
        "mnist_gru_t4_h32": (ROOT / "models_onnx" / "mnist_gru_t4_h32.onnx",
                             ROOT / "models_onnx" / "mnist_gru_t4_h32.samples.npz"),
        "keras/gru_reset_after (random weights)": (ROOT / "tests" / "fixtures" / "keras" / "gru_reset_after.onnx",
                                                   ROOT / "tests" / "fixtures" / "keras" / "gru_reset_after.npz")}
EXPORTERS = ("torch_legacy", "torch_dynamo", "torch_cellloop", "keras2", "keras3")
DTYPES = {"float64": torch.float64, "float32": torch.float32}


def load(path: Path, canonical: bool):
    """The graph with or without the canonical pass (the front end runs it in GraphBuilder.build)."""
    without = mock.patch.object(builder, "canonicalize", lambda graph: graph)
    with contextlib.nullcontext() if canonical else without:
        return parsers.load_onnx(path)


def spread(radii: list[float]) -> float:
    """Largest relative difference between exporters: max/min - 1."""
    return float(max(radii) / min(radii) - 1) if min(radii) > 0 else float("inf")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=5)
    parser.add_argument("--norm", type=float, default=2.0)
    parser.add_argument("--methods", default="crown,popqorn")
    parser.add_argument("--dtypes", default="float64,float32")
    parser.add_argument("--out", default="benchmarks/results/exporters.json")
    args = parser.parse_args(argv)
    x = np.load(FIXTURES / "samples.npz")["x"][:args.samples]
    rows, summary = [], []
    print(f"{'cell':>5} {'method':>8} {'dtype':>8} {'exporter':>15} {'products (no pass)':>40} "
          f"{'radius no pass':>15} {'radius pass':>12} {'s/sample':>9}")
    for cell in ("gru", "lstm"):
        graphs = {(name, canonical): load(FIXTURES / f"{cell}_{name}.onnx", canonical)
                  for name in EXPORTERS for canonical in (False, True)}
        for method in args.methods.split(","):
            for dtype in args.dtypes.split(","):
                radii: dict[bool, list[float]] = {False: [], True: []}
                for name in EXPORTERS:
                    row = {"cell": cell, "method": method, "dtype": dtype, "exporter": name,
                           "products_without_pass": describe_products(graphs[name, False]),
                           "products_with_pass": describe_products(graphs[name, True])}
                    for canonical in (False, True):
                        started = time.perf_counter()
                        results = certify(graphs[name, canonical], x, args.norm, options=SearchOptions(method=method),
                                          dtype=DTYPES[dtype])
                        mean = float(np.mean([r.radius for r in results]))
                        key = "with_pass" if canonical else "without_pass"
                        row[f"radius_{key}"] = mean
                        row[f"radii_{key}"] = [r.radius for r in results]
                        row[f"time_per_sample_s_{key}"] = (time.perf_counter() - started) / len(x)
                        radii[canonical].append(mean)
                    rows.append(row)
                    products = ", ".join(f"{k} {v}" for k, v in row["products_without_pass"].items() if v)
                    print(f"{cell:>5} {method:>8} {dtype:>8} {name:>15} {products:>40} {row['radius_without_pass']:15.6f} "
                          f"{row['radius_with_pass']:12.6f} {row['time_per_sample_s_with_pass']:9.3f}", flush=True)
                group = {"cell": cell, "method": method, "dtype": dtype, "spread_without_pass": spread(radii[False]),
                         "spread_with_pass": spread(radii[True])}
                summary.append(group)
                print(f"{'':>5} spread between exporters (max/min - 1): without the pass {group['spread_without_pass']:.2e}, "
                      f"with it {group['spread_with_pass']:.2e}", flush=True)
    forms = compare_gru_forms(args.samples, args.norm, args.methods.split(","))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({
            "date": datetime.date.today().isoformat(), "norm": args.norm, "samples": args.samples,
            "threads": torch.get_num_threads(), "gru_update_form": GRU_UPDATE_FORM, "summary": summary,
            "rows": rows, "gru_update_forms": forms}, indent=1) + "\n")
    return 0


def compare_gru_forms(samples: int, norm: float, methods: list[str]) -> list[dict]:
    """Mean certified radius (float64) of each GRU with each update form (canonical.GRU_UPDATE_FORMS)."""
    print(f"\n{'GRU':>40} {'method':>8} " + " ".join(f"{form:>10}" for form in GRU_UPDATE_FORMS)
          + " " + " ".join(f"{form + '/' + GRU_UPDATE_FORM:>22}" for form in GRU_UPDATE_FORMS if form != GRU_UPDATE_FORM))
    rows = []
    for label, (path, samples_path) in GRUS.items():
        raw = load(path, canonical=False)
        x = np.load(samples_path)["x"][:samples]
        for method in methods:
            row = {"model": label, "method": method}
            for form in GRU_UPDATE_FORMS:
                results = certify(canonicalize(raw, gru_update=form), x, norm, options=SearchOptions(method=method),
                                  dtype=torch.float64)
                row[form] = float(np.mean([r.radius for r in results]))
            rows.append(row)
            print(f"{label:>40} {method:>8} " + " ".join(f"{row[form]:10.6f}" for form in GRU_UPDATE_FORMS) + " "
                  + " ".join(f"{row[form] / row[GRU_UPDATE_FORM]:22.4f}" for form in GRU_UPDATE_FORMS
                             if form != GRU_UPDATE_FORM), flush=True)
    return rows


if __name__ == "__main__":
    raise SystemExit(main())

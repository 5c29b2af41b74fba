"""Pictures of certification results: per-sample radii, and POPQORN's per-frame sensitivity
(which time steps a sample is most sensitive to: small radius = sensitive)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt
import numpy as np


def plot_radii(rows: list[dict], path: str, title: str = "") -> None:
    """Bar chart of certified radii; with per-frame radii, a samples x frames heatmap beside it."""
    per_frame = [row for row in rows if "per_frame_radius" in row and not row["misclassified"]]
    columns = 2 if per_frame else 1
    figure, axes = plt.subplots(1, columns, figsize=(6 * columns, 4.5), squeeze=False)
    ax = axes[0, 0]
    indices = [row["index"] for row in rows]
    radii = [0.0 if row["misclassified"] or row["radius"] is None else row["radius"] for row in rows]
    colors = ["tab:gray" if row.get("skipped") else "tab:red" if row["misclassified"] else "tab:blue" for row in rows]
    ax.bar(range(len(rows)), radii, color=colors)
    ax.set_xlabel("sample")
    ax.set_ylabel("certified radius")
    ax.set_title("certified radius (red: misclassified, gray: skipped)")
    if len(rows) <= 30:
        ax.set_xticks(range(len(rows)), [str(i) for i in indices], fontsize=7)
    if per_frame:
        ax = axes[0, 1]
        matrix = np.array([row["per_frame_radius"] for row in per_frame])
        image = ax.imshow(matrix, aspect="auto", cmap="viridis", interpolation="nearest")
        ax.set_xlabel("perturbed frame t (only this frame perturbed)")
        ax.set_ylabel("sample")
        ax.set_xticks(range(matrix.shape[1]))
        if len(per_frame) <= 30:
            ax.set_yticks(range(len(per_frame)), [str(row["index"]) for row in per_frame], fontsize=7)
        ax.set_title("per-frame certified radius (dark = sensitive step)")
        figure.colorbar(image, ax=ax, label="certified radius")
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)

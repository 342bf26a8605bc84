"""Report figures: measured memory and speed ratios, memory by kind, projected vs logged GB."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..evaluate.plots import _plt, _save
from .tables import MEMORY_KINDS


def measured_ratios(rows: list[dict], path: str | Path) -> None:
    """Peak memory per rank and samples/s, each as a ratio to tp-baseline, per channel count and variant."""
    plt = _plt()
    channels = sorted({r["channels"] for r in rows})
    variants = list(dict.fromkeys(r["variant"] for r in rows))
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    width = 0.8 / len(variants)
    x = np.arange(len(channels))
    for ax, key, title in ((axes[0], "peak_mib_vs_tp", "peak memory per rank / TP-only"),
                           (axes[1], "samples_per_s_vs_tp", "samples/s / TP-only")):
        for i, v in enumerate(variants):
            values = [next((r[key] for r in rows if r["channels"] == c and r["variant"] == v), np.nan)
                      for c in channels]
            ax.bar(x + i * width, values, width, label=v)
        ax.axhline(1.0, color="k", lw=0.8)
        ax.set_xticks(x + width * (len(variants) - 1) / 2, [f"{c} ch" for c in channels])
        ax.set_title(title)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    _save(fig, path)


def memory_by_kind(rows: list[dict], path: str | Path, unit: str, title: str, label_key: str = "variant") -> None:
    """Stacked bars of peak memory by kind (parameters, gradients, optimizer, activations, temporaries)."""
    plt = _plt()
    labels = [f"{r.get('channels', '')} {r[label_key]}".strip() for r in rows]
    fig, ax = plt.subplots(figsize=(max(6.0, 0.45 * len(rows) + 2), 4))
    bottom = np.zeros(len(rows))
    for kind in MEMORY_KINDS:
        values = np.array([r["by_kind"].get(kind, 0.0) for r in rows])
        ax.bar(range(len(rows)), values, bottom=bottom, label=kind)
        bottom += values
    ax.set_xticks(range(len(rows)), labels, rotation=60, ha="right", fontsize=7)
    ax.set_ylabel(unit)
    ax.set_title(title)
    ax.legend(fontsize=7)
    fig.tight_layout()
    _save(fig, path)


def projected_vs_logged(rows: list[dict], path: str | Path) -> None:
    """Projected peak GiB per GPU against the authors' logged GB, one marker per architecture."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 5))
    for arch, marker in (("tp-baseline", "o"), ("dchag-L", "s"), ("dchag-C", "^")):
        pts = [(r["logged_gb"], r["peak_gib"]) for r in rows if r["arch"] == arch and r["logged_gb"]]
        if pts:
            ax.scatter(*zip(*pts), marker=marker, label=arch)
    top = max([r["peak_gib"] for r in rows] + [r["logged_gb"] or 0 for r in rows]) * 1.1
    ax.plot([0, top], [0, top], "k-", lw=0.8)
    ax.fill_between([0, top], [0, 0.85 * top], [0, 1.15 * top], color="grey", alpha=0.2, label="within 15%")
    ax.set_xlabel("logged by the authors (GB per GPU, read as GiB)")
    ax.set_ylabel("projected here (GiB per GPU)")
    ax.set_xlim(0, top), ax.set_ylim(0, top)
    ax.legend(fontsize=8)
    ax.set_title("peak memory per GPU: projected vs logged")
    fig.tight_layout()
    _save(fig, path)

"""Writing a robust evaluation: a printed table, JSON, CSV and two PNG figures."""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["format_table", "write_report"]


def format_table(result: dict[str, Any]) -> str:
    cols = result["threats"] + ["worst"]
    lines = [f"defense: {result['defense']}   n = {result['n']}   clean accuracy {result['clean_accuracy'] * 100:.2f} %"
             f" (undefended {result['clean_accuracy_undefended'] * 100:.2f} %)",
             f"{'attack':<10}" + "".join(f"{c:>10}" for c in cols)]
    for name, row in result["robust_accuracy"].items():
        lines.append(f"{name:<10}" + "".join(f"{row[c] * 100:>9.2f}%" for c in cols))
    lines.append(f"{'average':<10}" + "".join(f"{result['average'][c] * 100:>9.2f}%" for c in cols))
    if "surrogate" in result:
        own, stand_in = result.get("defense_config", {}), result["surrogate"]["defense_config"]
        changed = {k: v for k, v in stand_in.items() if own.get(k) != v}
        lines.append(f"adaptive threats crafted through the surrogate {result['surrogate']['defense']} "
                     f"({', '.join(f'{k}={v}' for k, v in changed.items()) or 'the same settings'})")
    adaptive = any(t != "blind" for t in result.get("threats", []))
    if result.get("attack", {}).get("cascade") and adaptive:
        lines.append("adaptive threats attacked only the images that survived the clean reading and the threats before "
                     "them (--cascade): each column counts the images that survived those too")
    elif result.get("attack", {}).get("skip_misread") and adaptive:
        lines.append("adaptive threats attacked only the images read right clean (--skip-misread)")
    return "\n".join(lines)


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _csv(result: dict[str, Any]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["defense", "attack", "threat", "robust_accuracy", "clean_accuracy", "n"])
    for name, row in result["robust_accuracy"].items():
        for threat, acc in row.items():
            w.writerow([result["defense"], name, threat, f"{acc:.6f}", f"{result['clean_accuracy']:.6f}", result["n"]])
    return buf.getvalue()


def _bar_figure(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    attacks = list(result["robust_accuracy"])
    cols = result["threats"] + (["worst"] if len(result["threats"]) > 1 else [])
    fig, ax = plt.subplots(figsize=(1.6 + 1.3 * len(attacks), 3.6), dpi=120)
    width = 0.8 / len(cols)
    for i, c in enumerate(cols):
        vals = [result["robust_accuracy"][a][c] * 100 for a in attacks]
        ax.bar(np.arange(len(attacks)) + (i - (len(cols) - 1) / 2) * width, vals, width, label=c)
    ax.axhline(result["clean_accuracy"] * 100, color="k", ls="--", lw=1, label="clean")
    ax.set_xticks(np.arange(len(attacks)), attacks)
    ax.set_ylim(0, 100)
    ax.set_ylabel("robust accuracy (%)")
    ax.set_title(f"defense: {result['defense']} (n = {result['n']})")
    ax.legend(fontsize=7, ncols=len(cols) + 1, loc="upper center", bbox_to_anchor=(0.5, -0.1), frameon=False)
    fig.tight_layout()
    fig.savefig(path.with_name(path.name + ".tmp.png"))
    plt.close(fig)
    os.replace(path.with_name(path.name + ".tmp.png"), path)


def _example_figure(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ex = result.get("examples", {})
    rows = [(a, t, arr) for a, by_t in ex.items() for t, arr in by_t.items()]
    if not rows:
        return
    k = rows[0][2].shape[1]
    fig, axes = plt.subplots(len(rows), 3 * k, figsize=(1.0 * 3 * k, 1.1 * len(rows)), dpi=110, squeeze=False)
    for r, (a, t, arr) in enumerate(rows):
        for j in range(k):
            for m, label in enumerate(("clean", "attacked", "purified")):
                ax = axes[r, 3 * j + m]
                ax.imshow(np.clip(arr[m, j].transpose(1, 2, 0), 0, 1), interpolation="nearest")
                ax.set_xticks([])
                ax.set_yticks([])
                if r == 0:
                    ax.set_title(label, fontsize=7)
                if m == 1 and np.array_equal(arr[0, j], arr[1, j]):  # left out (--skip-misread, --cascade)
                    ax.set_xlabel("not attacked", fontsize=6)
        axes[r, 0].set_ylabel(f"{a}\n{t}", fontsize=7)
    fig.tight_layout()
    fig.savefig(path.with_name(path.name + ".tmp.png"))
    plt.close(fig)
    os.replace(path.with_name(path.name + ".tmp.png"), path)


def write_report(result: dict[str, Any], out: Path) -> list[Path]:
    """Write results.json, results.csv, robust_accuracy.png and examples.png into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    plain = {k: v for k, v in result.items() if k != "examples"}
    paths = [out / "results.json", out / "results.csv", out / "robust_accuracy.png"]
    _atomic_write(paths[0], (json.dumps(plain, indent=2) + "\n").encode())
    _atomic_write(paths[1], _csv(result).encode())
    _bar_figure(result, paths[2])
    if result.get("examples"):
        paths.append(out / "examples.png")
        _example_figure(result, paths[3])
    return paths

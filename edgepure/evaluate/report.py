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


def _columns(result: dict[str, Any]) -> list[str]:
    """The columns a result shows: ``columns`` (``worst`` alone for ``--threat worst``), else each threat and worst."""
    return list(result.get("columns") or result["threats"] + ["worst"])


def _rows(result: dict[str, Any], cols: list[str], figures: str, average: str) -> list[str]:
    lines = [f"{'attack':<10}" + "".join(f"{c:>10}" for c in cols)]
    for name, row in result[figures].items():
        lines.append(f"{name:<10}" + "".join(f"{row[c] * 100:>9.2f}%" for c in cols))
    lines.append(f"{'average':<10}" + "".join(f"{result[average][c] * 100:>9.2f}%" for c in cols))
    return lines


def format_table(result: dict[str, Any]) -> str:
    cols = _columns(result)
    draws = int(result.get("resubmit", 1))
    clean = f"clean accuracy {result['clean_accuracy'] * 100:.2f} %"
    if draws > 1:
        clean += f" on all {draws} draws, {result['clean_accuracy_majority'] * 100:.2f} % by majority"
    lines = [f"defense: {result['defense']}   n = {result['n']}   {clean}"
             f" (undefended {result['clean_accuracy_undefended'] * 100:.2f} %)"]
    lines += _rows(result, cols, "robust_accuracy", "average")
    if draws > 1:
        lines.append(f"an image counts only if read right on each of {draws} noise draws (--resubmit); by the majority "
                     f"of the {draws} draws (what a camera loop that votes over frames reads):")
        lines += _rows(result, cols, "robust_accuracy_majority", "average_majority")
    lines += _notes(result)
    return "\n".join(lines)


def _notes(result: dict[str, Any]) -> list[str]:
    """The lines under the table: how the figures were made where it is not the plain protocol."""
    lines: list[str] = []
    attack = result.get("attack", {})
    threats = result.get("threats", [])
    adaptive = any(t != "blind" for t in threats)
    if result.get("columns") == ["worst"]:
        lines.append(f"worst: per image the worst of {', '.join(threats)} (each adaptive threat attacked the survivors "
                     f"of the threats before it)")
    if "blind" in threats and "blind_transfer" in attack:
        what = "the highest-loss iterate" if attack["blind_transfer"] == "loss" else "the first iterate that fooled it"
        lines.append(f"the blind threat transferred {what} of the attack on the classifier "
                     f"(--blind-transfer {attack['blind_transfer']})")
    if adaptive and attack.get("eot_default") and attack.get("eot", 1) > 1:
        lines.append(f"the adaptive threats averaged each gradient over {attack['eot']} noise draws (EOT, the default "
                     f"for a stochastic defense; --eot to change it)")
    if "surrogate" in result:
        own, stand_in = result.get("defense_config", {}), result["surrogate"]["defense_config"]
        changed = {k: v for k, v in stand_in.items() if own.get(k) != v}
        lines.append(f"adaptive threats crafted through the surrogate {result['surrogate']['defense']} "
                     f"({', '.join(f'{k}={v}' for k, v in changed.items()) or 'the same settings'})")
    if attack.get("cascade") and adaptive and result.get("columns") != ["worst"]:
        lines.append("adaptive threats attacked only the images that survived the clean reading and the threats before "
                     "them (--cascade): each column counts the images that survived those too")
    elif attack.get("skip_misread") and adaptive and not attack.get("cascade"):
        lines.append("adaptive threats attacked only the images read right clean (--skip-misread)")
    return lines


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _csv(result: dict[str, Any]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["defense", "attack", "threat", "robust_accuracy", "clean_accuracy", "n", "robust_accuracy_majority",
                "clean_accuracy_majority", "resubmit"])
    majority = result.get("robust_accuracy_majority", result["robust_accuracy"])
    clean_majority = result.get("clean_accuracy_majority", result["clean_accuracy"])
    for name, row in result["robust_accuracy"].items():
        for threat, acc in row.items():
            w.writerow([result["defense"], name, threat, f"{acc:.6f}", f"{result['clean_accuracy']:.6f}", result["n"],
                        f"{majority[name][threat]:.6f}", f"{clean_majority:.6f}", result.get("resubmit", 1)])
    return buf.getvalue()


def _bar_figure(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    attacks = list(result["robust_accuracy"])
    cols = result.get("columns") or result["threats"] + (["worst"] if len(result["threats"]) > 1 else [])
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

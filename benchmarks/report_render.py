"""BENCHMARKS.md and its figures from the JSON that ``benchmarks/report.py`` measured (no measuring here)."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

BACKENDS = {"torch": "torch eager", "ort-fp32": "ORT CPU FP32", "ort-int8": "ORT CPU INT8"}
COLUMNS = ("clean", "conv", "patch", "flow", "additive", "all", "mean")


def _pct(v: float) -> str:
    return f"{100 * v:.1f}"


def _half_width(p: float, n: int) -> float:
    """95 % normal-approximation half-width of an accuracy p on n images, in points."""
    return 100 * 1.96 * math.sqrt(max(p * (1 - p), 1e-12) / max(n, 1))


def pareto(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats on both latency (lower) and accuracy (higher), by latency."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front, best = [], -1.0
    for i in order:
        if points[i][1] > best:
            front.append(i)
            best = points[i][1]
    return front


def _accuracy_table(rows: list[dict[str, Any]], threat: str) -> list[str]:
    out = ["| purifier | backend | " + " | ".join(COLUMNS) + " |", "|---|---|" + "---:|" * len(COLUMNS)]
    for r in rows:
        for backend, label in BACKENDS.items():
            acc = r["accuracy"].get(backend, {}).get(threat)
            if acc is None:
                continue
            cells = [_pct(acc[c]) if c in acc else "–" for c in COLUMNS]
            cells[-1] = f"**{cells[-1]}**"
            out.append(f"| {r['label']} | {label} | " + " | ".join(cells) + " |")
    return out


def _cost_table(rows: list[dict[str, Any]], peak: float) -> list[str]:
    floor = next((r for r in rows if r["purifier"] == "none"), rows[0])
    f_ms = floor["latency_ms"]["ort-fp32"]
    out = ["| purifier | network calls / crop | torch ms | ORT FP32 ms | ORT INT8 ms | × classifier (FP32) | ORT vs torch | INT8 vs FP32 | "
           "MFLOPs / crop | GFLOP/s | of peak | blind mean gain per ms (FP32) |",
           "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    base = floor["accuracy"]["ort-fp32"]["blind"]["mean"]
    for r in rows:
        lat = r["latency_ms"]
        gflops = r["mflops_per_crop"] / lat["ort-fp32"]  # MFLOP per ms = GFLOP/s
        extra = lat["ort-fp32"] - f_ms
        gain = r["accuracy"]["ort-fp32"]["blind"]["mean"] - base
        per_ms = f"{100 * gain / extra:+.2f} pts" if r is not floor and extra > 0 else "–"
        calls = ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in r.get("calls_per_image", {}).items())
        out.append(f"| {r['label']} | {calls + ' + ' if calls else ''}classifier | {lat['torch']:.2f} | {lat['ort-fp32']:.2f} | {lat['ort-int8']:.2f} | "
                   f"{lat['ort-fp32'] / f_ms:.1f}× | {lat['torch'] / lat['ort-fp32']:.2f}× faster | "
                   f"{lat['ort-fp32'] / lat['ort-int8']:.2f}× | {r['mflops_per_crop']:.1f} | {gflops:.1f} | "
                   f"{100 * gflops / peak:.1f} % | {per_ms} |")
    return out


def _sweep_table(sweep: dict[str, Any], n: int) -> list[str]:
    attacks = sweep["attacks"]
    ref = sweep["reference"]
    head = ["K", f"clean (n={n})", *[f"{a} (n={n})" for a in attacks], f"clean (n={ref['n']})",
            *[f"{a} (n={ref['n']})" for a in attacks], "torch ms", "ORT FP32 ms"]
    out = ["| " + " | ".join(head) + " |", "|" + "---:|" * len(head)]
    for r in sweep["rows"]:
        acc, sub = r["accuracy"], r["accuracy_reference_images"]
        ort = r["latency_ms"].get("ort-fp32")
        cells = [str(r["steps"]), _pct(acc["clean"]), *[_pct(acc[a]) for a in attacks], _pct(sub["clean"]),
                 *[_pct(sub[a]) for a in attacks], f"{r['latency_ms']['torch']:.1f}",
                 f"{ort:.1f}" if ort is not None else "– (not exported)"]
        out.append("| " + " | ".join(cells) + " |")
    acc = ref["accuracy"]
    cells = [f"{ref['steps']} (reference)", "–", *["–" for _ in attacks], _pct(acc["clean"]),
             *[_pct(acc[a]) for a in attacks], f"{ref['latency_ms']['torch']:.0f}", "– (torch only)"]
    out.append("| " + " | ".join(cells) + " |")
    return out


def _front_text(rows: list[dict[str, Any]], threat: str) -> str:
    """The points on the Pareto front of ``threat`` (mean robust accuracy against latency), fastest first."""
    pts, names = [], []
    for r in rows:
        for backend, label in BACKENDS.items():
            acc = r["accuracy"][backend].get(threat) or (r["accuracy"][backend]["blind"] if r["purifier"] == "none" else None)
            if acc is not None:
                pts.append((r["latency_ms"][backend], 100 * acc["mean"]))
                names.append(f"{r['label']} ({label})")
    return ", ".join(f"{names[i]} {pts[i][1]:.1f} % at {pts[i][0]:.2f} ms" for i in pareto(pts))


def _pareto_figure(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report["purifiers"]
    markers = {"torch": "o", "ort-fp32": "s", "ort-int8": "^"}
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8), sharey=True)
    for ax, threat, n in ((axes[0], "blind", report["n"]), (axes[1], "adaptive", report["adaptive_n"])):
        pts: list[tuple[float, float]] = []
        for i, r in enumerate(rows):
            colour = f"C{i % 10}"
            for backend, m in markers.items():
                acc = r["accuracy"][backend].get(threat) or (r["accuracy"][backend]["blind"] if r["purifier"] == "none" else None)
                if acc is None:
                    continue
                x, y = r["latency_ms"][backend], 100 * acc["mean"]
                ax.scatter([x], [y], marker=m, color=colour, s=55, edgecolor="black", linewidth=0.5, zorder=3)
                pts.append((x, y))
        front = pareto(pts)
        ax.step([pts[i][0] for i in front], [pts[i][1] for i in front], where="post", color="grey", lw=1, zorder=2)
        floor = next((r for r in rows if r["purifier"] == "none"), None)
        if floor is not None:
            ax.axhline(100 * floor["accuracy"]["ort-fp32"]["blind"]["mean"], color="black", ls=":", lw=1)
        ax.set_xscale("log")
        ax.set_xlabel("latency per crop, ms (batch 1, log scale)")
        ax.set_title(f"{threat} threat, mean over attacks (n={n})")
        ax.grid(alpha=0.3, which="both")
    axes[0].set_ylabel("robust accuracy, %")
    handles = [plt.Line2D([], [], marker="o", ls="", color=f"C{i % 10}", label=r["label"]) for i, r in enumerate(rows)]
    handles += [plt.Line2D([], [], marker=m, ls="", color="grey", label=BACKENDS[b]) for b, m in markers.items()]
    fig.suptitle("Robustness per millisecond: grey = Pareto front, dotted = classifier alone (blind)")
    fig.tight_layout(rect=(0, 0.12, 1, 1))
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 6), fontsize=8, frameon=False)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _sweep_figure(sweep: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    ms = [r["latency_ms"]["torch"] for r in sweep["rows"]]
    for a in ("clean", *sweep["attacks"]):
        ax.plot(ms, [100 * r["accuracy"][a] for r in sweep["rows"]], marker="o", label=a)
        for r, x in zip(sweep["rows"], ms):
            ax.annotate(f"K={r['steps']}", (x, 100 * r["accuracy"][a]), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ref = sweep["reference"]
    for i, a in enumerate(("clean", *sweep["attacks"])):
        ax.scatter([ref["latency_ms"]["torch"]], [100 * ref["accuracy"][a]], marker="*", s=120, color=f"C{i}",
                   edgecolor="black", zorder=3)
    ax.set_xscale("log")
    ax.set_xlabel("torch latency per crop, ms (log)")
    ax.set_ylabel("accuracy, %")
    ax.set_title(f"NAPPure {sweep['kind']}: K-sweep (dots) vs {ref['steps']}-step reference (stars)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _intro(report: dict[str, Any]) -> list[str]:
    """The page's opening paragraphs: the command and date, the machine, the data and attacks, the backends."""
    m, s, n, na = report["machine"], report["settings"], report["n"], report["adaptive_n"]
    versions = ", ".join(f"{k} {v}" for k, v in m["packages"].items())
    command = report["command"]
    if "--purifiers" not in command and not s.get("smoke"):  # the default list changes as purifiers land
        command += f" --purifiers {s['purifiers']}"
    return [
        "# edgepure benchmarks",
        "",
        f"Generated by `{command}` on {report['date']} in {report['minutes']} minutes; every number on this "
        "page comes from that one run (raw numbers: `report.json` in the run's `--out`).",
        "",
        f"**Machine.** {m['cpu']}, {m['logical_cpus']} logical CPUs, {m.get('memory_gib', '?')} GiB, {m['os']}, "
        f"Python {m['python']}; {versions}. Measured peak: **{m['matmul_peak_gflops']} GFLOP/s** (best float32 "
        f"matrix product, numpy, {m['threads_used']} thread). All timings use {m['threads_used']} thread, batch 1."
        + (f" {report['note']}" if report.get("note") else "")
        + (f" Every latency on this page was re-measured in one pass on {report['latency_pass']} "
           "(`--from-json report.json --retime`, the same model directories)." if report.get("latency_pass") else ""),
        "",
        f"**Data and attacks.** Classifier `{s['classifier']}`. {report['data']}: {n} images (seed {s['seed']}) under the blind threat (APGD-{s['steps']} "
        f"on the classifier alone), the first {na} of them under the adaptive threat (APGD-{s['adaptive_steps']} "
        "through the purifier, full gradient, the purifier's noise drawn as the deployed model draws it). "
        "Attack families and budgets as in `edgepure eval robust` (conv = blur kernel, patch = occlusion, "
        "flow = distortion, additive = L∞ noise, all = every family at once). Robust accuracy counts an image "
        "only if it is classified correctly both clean and attacked. The attacks are computed once on the "
        "PyTorch twin; torch eager, ONNX Runtime FP32 and INT8 score the same adversarial images (so INT8's "
        "adaptive column is a transfer from the FP32 gradient). "
        f"Sampling error: a 95 % interval is ±{_half_width(0.5, n):.1f} points at n={n} and ±{_half_width(0.5, na):.1f} "
        f"at n={na} for an accuracy near 50 % (narrower towards 0 or 100 %).",
        "",
        "**Backends.** torch eager = the PyTorch purifier and classifier; ORT CPU FP32 = the exported model "
        "directory (one static graph, batch 1) in edgepure's runtime; ORT CPU INT8 = `edgepure calibrate` "
        f"of it (entropy, scope forward: the classifier and the purifier's forward convolutions, {s['calib_n']} "
        f"training-split images, {s['purifier_n']} for the purifier). Latency = median of the runtime's full step "
        "(uint8 frame → top-k) for ORT, purify + classify for torch.",
        "",
    ]


def write_report(report: dict[str, Any], md: Path, figures: Path) -> list[Path]:
    """Write the figures into ``figures`` and the Markdown to ``md``; return the paths written."""
    figures.mkdir(parents=True, exist_ok=True)
    md.parent.mkdir(parents=True, exist_ok=True)
    fig_pareto, fig_sweep = figures / "pareto.png", figures / "nappure_sweep.png"
    _pareto_figure(report, fig_pareto)
    _sweep_figure(report["sweep"], fig_sweep)
    m, n, na = report["machine"], report["n"], report["adaptive_n"]
    rows = report["purifiers"]
    rel = lambda p: os.path.relpath(p, md.parent)  # noqa: E731
    lines = [
        *_intro(report),
        "## Robustness against latency",
        "",
        f"![robust accuracy against latency]({rel(fig_pareto)})",
        "",
        f"On the blind front (mean robust accuracy, latency per crop): {_front_text(rows, 'blind')}.",
        "",
        f"On the adaptive front: {_front_text(rows, 'adaptive')}.",
        "",
        "### What each purifier costs",
        "",
        *_cost_table(rows, m["matmul_peak_gflops"]),
        "",
        "FLOPs count Conv, ConvTranspose, Gemm and MatMul of the FP32 pipeline graph (2 per multiply-accumulate; "
        "the elementwise work of NAPPure's unrolled Adam steps is not counted). GFLOP/s and 'of peak' use the "
        "ORT FP32 latency. 'Gain per ms' = blind mean robust accuracy gained over the classifier alone per "
        "millisecond added.",
        "",
        f"### Blind threat (n={n}), accuracy %",
        "",
        *_accuracy_table(rows, "blind"),
        "",
        f"### Adaptive threat (n={na}), accuracy %",
        "",
        *_accuracy_table(rows, "adaptive"),
        "",
        f"## NAPPure K-sweep ({report['sweep']['kind']}, blind)",
        "",
        f"![NAPPure K-sweep]({rel(fig_sweep)})",
        "",
        *_sweep_table(report["sweep"], n),
        "",
        f"The {report['sweep']['reference']['steps']}-step reference is the paper's optimisation (torch only); it runs "
        f"on the first {report['sweep']['reference']['n']} images, and the K rows are scored on those images too "
        "for a like-for-like comparison. Its latency is one timed crop.",
        "",
    ]
    md.write_text("\n".join(lines))
    return [fig_pareto, fig_sweep, md]

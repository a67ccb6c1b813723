"""The purifier comparison: every registered purifier, NAPPure and no defense, side by side in torch on the same
images and attacks, written to docs/comparison.md (one table, plus the exact commands).

    python benchmarks/purifiers.py --data ../shared/data/gtsrb --out runs/comparison --md docs/comparison.md
    python benchmarks/purifiers.py --smoke --out /tmp/cmp --md /tmp/cmp/comparison.md     # seconds

Per row (``--purifiers``, ``name[:key=value...]``; ``none`` = the classifier alone):

- clean accuracy and robust accuracy per attack family (conv, patch, flow, additive, all) under the blind
  threat (APGD-CE ``--steps`` on the classifier, ``--n`` GTSRB track-validation images, seed ``--seed``)
  and the adaptive one (APGD-CE ``--adaptive-steps`` through the purifier's full gradient, with fresh
  noise at every gradient and ``--eot`` samples per step where the purifier is random, on ``--adaptive-n``
  images drawn the same way, i.e. exactly what ``edgepure eval robust --n ADAPTIVE_N`` scores);
- torch CPU latency of purify + classify for one crop (``--threads``), and the network calls per crop.

The rows are the same computation as ``edgepure eval robust`` (each row's command is written with the
table); adversarial examples are cached (``--out``/advcache) and every finished row is kept in
``--out``/rows/, so an interrupted run picks up where it stopped.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from report import ATTACKS, Log, _accuracy, parse_purifier, resumed_row, robust_command, torch_latency_ms, use_threads

DEFAULT_PURIFIERS = ",".join([
    "none", "gaussian", "median", "bitdepth", "ncis", "impure",
    "hetero_diffusion", "hetero_diffusion:t_l=0.06:t_s=0.03", "hetero_diffusion:t_l=0.06:t_s=0.03:votes=5",
    "coup", "coup:steps=8:t_star=0.05", "nappure:kind=joint:steps=8",
])


def _row_command(a: argparse.Namespace, name: str, kw: dict[str, Any], threat: str, eot: int = 1) -> str:
    n, steps = (a.n, a.steps) if threat == "blind" else (a.adaptive_n, a.adaptive_steps)
    return robust_command(a.data, a.classifier, n, a.seed, name, kw, threat, steps, (f"--eot {eot}",) if eot > 1 else ())


def measure(a: argparse.Namespace, spec: str, data: Any, data_adaptive: Any, classifier: Any, log: Log) -> dict[str, Any]:
    import torch

    from edgepure.evaluate.robust import benchmark
    from edgepure.purifiers import create_purifier

    label, name, kw = parse_purifier(spec)
    pur = None if name == "none" else create_purifier(name, **kw)
    random = bool(getattr(pur, "stochastic", False))
    cache = a.out / "advcache"
    row: dict[str, Any] = {"label": label, "purifier": name, "settings": kw, "stochastic": random,
                           "config": pur.config() if pur is not None else {},
                           "calls_per_image": pur.calls_per_image() if callable(getattr(pur, "calls_per_image", None)) else {}}
    t0 = time.perf_counter()
    log(f"{label}: blind, {len(data)} images")
    blind = benchmark(classifier, data, pur, list(ATTACKS), ["blind"], steps=a.steps, seed=a.seed, cache_dir=cache)
    row["blind"] = _accuracy(blind, "blind")
    row["commands"] = [_row_command(a, name, kw, "blind")]
    if pur is not None:
        eot = a.eot if random else 1
        # a purifier whose gradient is zero (quantisation) is attacked through the identity instead (BPDA)
        threat = "bpda" if getattr(pur, "masks_gradient", False) else "adaptive"
        log(f"{label}: {threat}, {len(data_adaptive)} images, EOT {eot}")
        adaptive = benchmark(classifier, data_adaptive, pur, list(ATTACKS), [threat], steps=a.adaptive_steps,
                             eot=eot, seed=a.seed, cache_dir=cache)
        row["adaptive"] = _accuracy(adaptive, threat)
        row["adaptive"].update(eot=eot, threat=threat, n=len(data_adaptive), steps=a.adaptive_steps)
        row["commands"].append(_row_command(a, name, kw, threat, eot))
    log(f"{label}: latency")
    x1 = torch.from_numpy(data.as_float_nchw()[:1])
    row["latency_ms"] = round(torch_latency_ms(classifier, pur, x1, a.latency_iters), 3)
    row["seconds"] = round(time.perf_counter() - t0, 1)
    return row


def retime(report: dict[str, Any], threads: int, iters: int, log: Log) -> None:
    """Time every row of a finished run again, one after the other, with the same crop and settings."""
    use_threads(threads)
    import torch

    from edgepure.data import open_dataset
    from edgepure.models.registry import load_classifier
    from edgepure.purifiers import create_purifier

    s = report["settings"]
    classifier = load_classifier(s["classifier"])
    x1 = torch.from_numpy(open_dataset(s["data"], "val", n=s["n"], seed=s["seed"]).as_float_nchw()[:1])
    for row in report["rows"]:
        log(f"latency: {row['label']}")
        pur = None if row["purifier"] == "none" else create_purifier(row["purifier"], **row["settings"])
        row["latency_ms"] = round(torch_latency_ms(classifier, pur, x1, iters), 3)
    report["retimed"] = time.strftime("%Y-%m-%d")


def _calls(row: dict[str, Any]) -> str:
    return ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in row["calls_per_image"].items()) or "–"


def render(report: dict[str, Any]) -> str:
    s = report["settings"]
    pct = lambda v: f"{100 * v:.1f}"  # noqa: E731
    head = "| purifier | settings | clean | " + " | ".join(ATTACKS) + " | **mean** |"
    sep = "|---|---|---:|" + "---:|" * (len(ATTACKS) + 1)
    retimed = f" (latencies timed again in one quiet pass, {report['retimed']})" if report.get("retimed") else ""
    lines = ["# The purifiers compared", "",
             f"Measured {report['date']} ({report['minutes']} min of compute) on {report['machine']}{retimed}; "
             f"{report['data']}; classifier `{s['classifier']}`; torch, {s['threads']} thread(s). Accuracy %; an image counts as robust only if the "
             "defended pipeline also classifies its clean version correctly. Produced by `benchmarks/purifiers.py` "
             "(commands at the end).", ""]
    if report.get("note"):
        lines += [report["note"].rstrip(), ""]
    lines += [f"### Blind threat: APGD-CE {s['steps']} steps on the classifier, {report['n']} images", "", head, sep]
    for r in report["rows"]:
        settings = ", ".join(f"{k}={v}" for k, v in r["settings"].items()) or "defaults"
        b = r["blind"]
        lines.append(f"| {r['purifier']} | {settings} | {pct(b['clean'])} | "
                     + " | ".join(pct(b[k]) for k in ATTACKS) + f" | **{pct(b['mean'])}** |")
    lines += ["", f"### Adaptive threat: APGD-CE {s['adaptive_steps']} steps through the purifier, {report['adaptive_n']} "
              f"images (`--n {report['adaptive_n']}`, seed {s['seed']}), fresh noise every gradient, EOT {s['eot']} where random; "
              "BPDA (the purifier's backward replaced by the identity) where its gradient is zero", "",
              head.replace("| clean |", "| clean | EOT |"), sep.replace("---:|", "---:|---:|", 1)]
    for r in report["rows"]:
        if "adaptive" not in r:
            continue
        settings = ", ".join(f"{k}={v}" for k, v in r["settings"].items()) or "defaults"
        d = r["adaptive"]
        name = r["purifier"] + (" (BPDA)" if d.get("threat") == "bpda" else "")
        if d.get("n", report["adaptive_n"]) != report["adaptive_n"] or d.get("steps", s["adaptive_steps"]) != s["adaptive_steps"]:
            name += f" ({d['n']} images, APGD-{d['steps']})"
        cells = " | ".join(pct(d[k]) if k in d else d.get("missing", "–") for k in ATTACKS)
        mean = f"**{pct(d['mean'])}**" if "mean" in d else "–"
        lines.append(f"| {name} | {settings} | {pct(d['clean'])} | {d['eot']} | {cells} | {mean} |")
    lines += ["", f"### Cost: torch CPU, purify + classify, one crop, {s['threads']} thread(s)", "",
              "| purifier | settings | ms / crop | network calls / crop | blind mean per ms |", "|---|---|---:|---|---:|"]
    for r in report["rows"]:
        settings = ", ".join(f"{k}={v}" for k, v in r["settings"].items()) or "defaults"
        lines.append(f"| {r['purifier']} | {settings} | {r['latency_ms']:.2f} | {_calls(r)} | "
                     f"{100 * r['blind']['mean'] / r['latency_ms']:.2f} |")
    lines += ["", "Commands, one per row and threat (the script runs the same function, with a shared cache), all on the "
              f"classifier `{s['classifier']}` (`--model {s['classifier']}` where a command does not name it):", "", "```"]
    lines += [c for r in report["rows"] for c in r["commands"]]
    lines += ["```", "", f"The whole table: `{report['command']}`"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", help="GTSRB folder or zip (the track-validation split is scored)")
    ap.add_argument("--smoke", action="store_true", help="synthetic signs and tiny settings: checks the script")
    ap.add_argument("--purifiers", default=DEFAULT_PURIFIERS, help="comma list of name[:key=value...]")
    ap.add_argument("--classifier", default=None, help="registered classifier with shipped weights (default: the shipped default classifier)")
    ap.add_argument("--n", type=int, default=512)
    ap.add_argument("--adaptive-n", type=int, default=64)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--adaptive-steps", type=int, default=20)
    ap.add_argument("--eot", type=int, default=2, help="gradient samples per adaptive step for random purifiers")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--latency-iters", type=int, default=20)
    ap.add_argument("--out", type=Path, default=Path("runs/comparison"))
    ap.add_argument("--md", type=Path, help="write the tables here (default: --out/comparison.md)")
    ap.add_argument("--from-json", action="store_true", help="only render --out/comparison.json again")
    ap.add_argument("--note-file", type=Path, help="Markdown placed under the title (kept in the JSON)")
    ap.add_argument("--retime", action="store_true",
                    help="with --from-json: time every row again in one pass (for a run that shared the machine)")
    args = ap.parse_args(argv)
    md = args.md or args.out / "comparison.md"
    if args.from_json:
        report = json.loads((args.out / "comparison.json").read_text())
        report["settings"].setdefault("classifier", "signnet_s")  # runs from before --classifier used signnet_s
        if args.retime:
            retime(report, args.threads, args.latency_iters, Log())
        if args.note_file:
            report["note"] = args.note_file.read_text()
        (args.out / "comparison.json").write_text(json.dumps(report, indent=2) + "\n")
        md.write_text(render(report))
        print(md.read_text())
        return
    if args.smoke:
        args.n, args.adaptive_n, args.steps, args.adaptive_steps, args.latency_iters = 6, 3, 2, 2, 2
        args.data = "synth"
        if args.purifiers == DEFAULT_PURIFIERS:
            args.purifiers = "none,median,hetero_diffusion:votes=2"
    elif not args.data:
        ap.error("--data is required (or --smoke)")
    use_threads(args.threads)
    from edgepure.data import open_dataset
    from edgepure.models.registry import load_classifier
    from edgepure.runtime.machine import describe_machine

    log, t0 = Log(), time.perf_counter()
    data = open_dataset(args.data, "val", n=args.n, seed=args.seed)
    data_adaptive = open_dataset(args.data, "val", n=args.adaptive_n, seed=args.seed)  # what `eval robust --n` scores
    classifier = load_classifier(args.classifier)
    args.classifier = classifier.edgepure_name  # recorded by name: the default may change
    rows_dir = args.out / "rows"
    rows_dir.mkdir(parents=True, exist_ok=True)
    keep = {k: getattr(args, k) for k in ("data", "classifier", "n", "adaptive_n", "steps", "adaptive_steps", "eot", "seed", "threads")}
    rows = [resumed_row(rows_dir / (parse_purifier(spec)[0] + ".json"), keep,
                        lambda spec=spec: measure(args, spec, data, data_adaptive, classifier, log), log)
            for spec in args.purifiers.split(",") if spec]
    m = describe_machine()
    report = {"settings": keep, "rows": rows, "n": len(data), "adaptive_n": len(data_adaptive),
              "machine": f"{m['cpu']} ({m['logical_cpus']} logical CPUs)",
              "data": "synthetic renders" if args.smoke else f"GTSRB track-validation split ({args.data})",
              "command": " ".join(["python", "benchmarks/purifiers.py", *(argv if argv is not None else sys.argv[1:])]),
              "date": time.strftime("%Y-%m-%d"), "minutes": round(sum(r["seconds"] for r in rows) / 60, 1),
              "note": args.note_file.read_text() if args.note_file else ""}
    (args.out / "comparison.json").write_text(json.dumps(report, indent=2) + "\n")
    md.parent.mkdir(parents=True, exist_ok=True)
    md.write_text(render(report))
    print(md.read_text())
    log(f"wrote {md} ({(time.perf_counter() - t0) / 60:.1f} min this run)")


if __name__ == "__main__":
    main()

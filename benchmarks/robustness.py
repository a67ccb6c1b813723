"""The worst-case table: every defense under the blind and the adaptive attack and, per image, the worst of both,
behind the standard classifier and behind the adversarially trained one, written to docs/robustness.md.

    python benchmarks/robustness.py --data ../shared/data/gtsrb --cache runs/robustness      # the published table
    python benchmarks/robustness.py --smoke --cache /tmp/rob --md /tmp/rob/robustness.md    # about a minute

Rows (``--rows``, a comma list of the keys below; default all): no defense (``none``) and each of median,
hetero_diffusion, coup, impure and joint NAPPure at K = 8 (``nappure-joint-K8``, its shipped learned settings) behind
the standard classifier (``--classifier``), and the same behind the adversarially trained one (``--at-classifier``,
a registered name or a checkpoint; the key with ``+at``: ``none+at``, ``median+at``, …). Without
``--at-classifier`` its rows use ``signnet_s_at`` where its weights ship, and are marked "not yet trained" where not.

Per row, on ``--n`` GTSRB track-validation images drawn with ``--seed`` (``edgepure.evaluate.robust.benchmark``,
the function behind ``edgepure eval robust``; each row's commands are written with the table):

- **blind**: APGD-CE ``--steps`` on the classifier alone, its highest-loss iterate sent through the defense;
- **adaptive**: APGD-CE ``--adaptive-steps`` through the whole pipeline (the purifier's full gradient, averaged over
  4 noise draws per step where the purifier is random) on the images the pipeline reads right clean;
- **worst**: per image the worst of the two (``edgepure eval worst``): an image counts only if the pipeline reads it
  right clean and after both attacks — for a random purifier on each of R fresh noise draws (``--resubmit``,
  default 5 for a random pipeline, 1 for another), with the majority over the R draws beside it;
- the ORT CPU latency of the exported FP32 pipeline for one crop (``--threads``; ``--no-latency [ROWS]`` skips the
  export, whose unrolled NAPPure steps take minutes each on a CPU, and prints "—").

Everything lands in ``--cache``: the adversarial examples and the pipeline's readings (``benchmark``'s cache: the
blind examples of a classifier serve every defense in front of it), the exported models (``models/``) and each
finished row (``rows/``), so the same command after an interruption picks up where it stopped. The Markdown goes to
``--md`` and the numbers to the JSON beside it.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any, Optional, Sequence

from report import (ATTACKS, Log, export_fp32, parse_purifier, resumed_row, robust_command, runtime_latency_ms,
                    use_threads)

FAMILIES = ATTACKS[:4]  # the "all" attack is shown but stays out of the mean, as in the NAPPure paper
PURIFIERS = ("none", "median", "hetero_diffusion", "coup", "impure", "nappure:kind=joint:steps=8")
AT_DEFAULT = "signnet_s_at"
SMOKE_ROWS = "none,none+at,median,median+at,hetero_diffusion"
NOT_TRAINED = "not yet trained"


def row_plan() -> dict[str, tuple[str, str]]:
    """Every row of the table: its key → (purifier spec, ``std`` or ``at`` classifier); each defense behind the
    standard classifier, then behind the adversarially trained one."""
    return {parse_purifier(spec)[0] + ("+at" if side == "at" else ""): (spec, side)
            for spec in PURIFIERS for side in ("std", "at")}


def select_rows(arg: Optional[str], plan: dict[str, tuple[str, str]], option: str = "--rows") -> list[str]:
    """The keys of ``arg`` (a comma list; None: every row) in the table's order."""
    if arg is None:
        return list(plan)
    asked = [k.strip() for k in arg.split(",") if k.strip()]
    unknown = [k for k in asked if k not in plan]
    if unknown or not asked:
        sys.exit(f"{option}: expected a comma list of rows among {', '.join(plan)}; got {arg!r}"
                 + (f" ({', '.join(unknown)} unknown)" if unknown else ""))
    return [k for k in plan if k in asked]


def at_classifier(arg: Optional[str], shipped: Sequence[str]) -> Optional[str]:
    """The adversarially trained classifier: the one asked, else ``signnet_s_at`` where its weights ship (among
    ``shipped``), else None (its rows are marked not yet trained)."""
    if arg is not None:
        return arg
    return AT_DEFAULT if AT_DEFAULT in shipped else None


def not_trained_row(key: str, spec: Optional[str]) -> dict[str, Any]:
    """The placeholder of a row behind an adversarially trained classifier that does not exist yet."""
    spec_of_row, side = row_plan()[key]
    label, name, kw = parse_purifier(spec_of_row)
    return {"key": key, "defense": _defense_label(label, name), "purifier": name, "settings": kw, "side": side,
            "classifier": spec or AT_DEFAULT, "classifier_label": f"{spec or AT_DEFAULT} (AT)", "missing": NOT_TRAINED}


def _defense_label(label: str, name: str) -> str:
    return "no defense" if name == "none" else label


def sampling_error_points(n: int) -> float:
    """The binomial standard error of an accuracy on ``n`` images at its largest (p = 0.5), in points."""
    return 100 * math.sqrt(0.25 / n)


def _figures(result: dict[str, Any], threat: str) -> dict[str, float]:
    return {a: result["robust_accuracy"][a][threat] for a in ATTACKS}


def _majority_view(result: dict[str, Any]) -> dict[str, Any]:
    """``result`` with its per-image readings by the majority of the noise draws in place of "every draw"."""
    per = result["per_image"]
    return {**result, "per_image": {**per, "clean": per["clean_majority"], "attacks": per["attacks_majority"]}}


def _worst(blind: dict[str, Any], adaptive: Optional[dict[str, Any]]) -> tuple[dict[str, float], dict[str, float]]:
    """Per attack, the per-image worst of the two runs: by every draw, and by the majority of the draws."""
    from edgepure.evaluate.worst import worst_of

    if adaptive is None:  # without a purifier the blind attack differentiates the whole deployed model
        return _figures(blind, "blind"), {a: blind["robust_accuracy_majority"][a]["blind"] for a in ATTACKS}
    every = worst_of([blind, adaptive], ["blind", "adaptive"])
    major = worst_of([_majority_view(blind), _majority_view(adaptive)], ["blind", "adaptive"])
    return ({a: every["robust_accuracy"][a]["worst"] for a in ATTACKS},
            {a: major["robust_accuracy"][a]["worst"] for a in ATTACKS})


class Table:
    """One run's shared state: the images, both classifiers and the cache."""

    def __init__(self, args: argparse.Namespace, log: Log) -> None:
        from edgepure.data import open_dataset
        from edgepure.models.loading import resolve_classifier

        self.args, self.log = args, log
        self.data = open_dataset(args.data, "val", n=args.n, seed=args.seed)
        self.classifiers = {"std": resolve_classifier(args.classifier)}
        self.specs = {"std": args.classifier or self.classifiers["std"].edgepure_name, "at": args.at_classifier}
        if args.at_classifier is not None:
            self.classifiers["at"] = resolve_classifier(args.at_classifier)

    def weights(self, side: str) -> str:
        """A digest of a classifier's weights: a checkpoint trained further since a row was measured re-measures it."""
        from edgepure.evaluate.robust import _weights_digest

        return _weights_digest(self.classifiers[side], None)

    def benchmark(self, side: str, purifier: Any, threat: str, steps: int) -> dict[str, Any]:
        from edgepure.evaluate.robust import benchmark

        a = self.args
        # the adaptive threat attacks only what can count (the images read right clean); the blind one attacks every
        # image, and its examples serve every defense in front of the same classifier
        return benchmark(self.classifiers[side], self.data, purifier, list(ATTACKS), [threat], steps=steps,
                         seed=a.seed, cache_dir=a.cache, resubmit=a.resubmit, skip_misread=threat != "blind")

    def commands(self, key: str, side: str, name: str, kw: dict[str, Any], threat: Optional[str]) -> list[str]:
        """The ``edgepure eval robust`` (and ``eval worst``) commands that measure the row ``key``."""
        a = self.args
        common = (f"--cache {a.cache}",) + ((f"--resubmit {a.resubmit}",) if a.resubmit else ())

        def run(t: str, steps: int, extra: tuple[str, ...]) -> str:
            return robust_command(a.data, self.specs[side], a.n, a.seed, name, kw, t, steps, common + extra)

        if threat is None:
            return [run("blind", a.steps, ())]
        return [run("blind", a.steps, ()) + f" > {key}.blind.json",
                run(threat, a.adaptive_steps, ("--skip-misread",)) + f" > {key}.{threat}.json",
                f"edgepure eval worst {key}.blind.json {key}.{threat}.json"]

    def latency_ms(self, key: str, purifier: Any, name: str, side: str) -> Optional[float]:
        a = self.args
        if a.no_latency is not None and key in a.no_latency:
            return None
        clf = self.classifiers[side]
        names = getattr(clf, "pretrained_cfg", {}).get("class_names") or self.data.class_names
        d = export_fp32(purifier, name, clf, a.cache / "models" / key, self.data.as_float_nchw()[:8], names)
        return round(runtime_latency_ms(d, a.latency_iters, a.threads), 3)

    def measure(self, key: str) -> dict[str, Any]:
        from edgepure.purifiers import create_purifier

        spec, side = row_plan()[key]
        label, name, kw = parse_purifier(spec)
        pur = None if name == "none" else create_purifier(name, **kw)
        # a purifier whose gradient is zero (quantisation) is attacked through the identity instead (BPDA)
        threat = None if pur is None else ("bpda" if getattr(pur, "masks_gradient", False) else "adaptive")
        t0 = time.perf_counter()
        self.log(f"{key}: blind, {len(self.data)} images")
        blind = self.benchmark(side, pur, "blind", self.args.steps)
        adaptive = None
        if threat is not None:
            self.log(f"{key}: {threat}, {len(self.data)} images")
            adaptive = self.benchmark(side, pur, threat, self.args.adaptive_steps)
        worst, worst_majority = _worst(blind, adaptive)
        self.log(f"{key}: latency")
        ms = self.latency_ms(key, pur, name, side)
        return {"key": key, "defense": _defense_label(label, name), "purifier": name, "settings": kw, "side": side,
                "classifier": self.specs[side],
                "classifier_label": f"{self.specs[side]} ({'AT' if side == 'at' else 'standard'})",
                "config": pur.config() if pur is not None else {},
                "stochastic": bool(getattr(pur, "stochastic", False)),
                "resubmit": blind["resubmit"], "eot": adaptive["attack"]["eot"] if adaptive else 1, "threat": threat,
                "clean": blind["clean_accuracy"], "blind": _figures(blind, "blind"),
                "adaptive": _figures(adaptive, threat) if adaptive else None, "worst": worst,
                "worst_majority": worst_majority, "mean_worst": sum(worst[f] for f in FAMILIES) / len(FAMILIES),
                "mean_worst_majority": sum(worst_majority[f] for f in FAMILIES) / len(FAMILIES),
                "latency_ms": ms, "commands": self.commands(key, side, name, kw, threat),
                "seconds": round(time.perf_counter() - t0, 1)}


def _pct(v: float) -> str:
    return f"{100 * v:.1f}"


def _table_row(r: dict[str, Any]) -> str:
    head = f"| {r['defense']} | {r['classifier_label']} |"
    if r.get("missing"):
        return head + f" {r['missing']} |" + " – |" * (len(ATTACKS) + 4)
    cells = [_pct(r["clean"])]
    cells += [f"{_pct(r['blind'][a])} / {'–' if r['adaptive'] is None else _pct(r['adaptive'][a])} / "
              f"**{_pct(r['worst'][a])}**" for a in ATTACKS]
    cells += [f"**{_pct(r['mean_worst'])}**", _pct(r["mean_worst_majority"]), str(r["resubmit"]),
              "—" if r["latency_ms"] is None else f"{r['latency_ms']:.2f}"]
    return head + " " + " | ".join(cells) + " |"


def render(report: dict[str, Any]) -> str:
    s = report["settings"]
    rows = report["rows"]
    eot = sorted({r["eot"] for r in rows if r.get("stochastic")})
    lines = ["# Robustness: the worst case, per defense", "",
             f"Measured {report['date']} on {report['machine']}; {report['data']}, n = {report['n']} images drawn with "
             f"seed {s['seed']}. Made by `{report['command']}` (`benchmarks/robustness.py`; each row's "
             "`edgepure eval robust` commands are at the end).", "",
             "**Which figure is which.** In each attack's cell, *blind* is APGD-CE "
             f"{s['steps']} steps on the classifier alone, its highest-loss iterate sent through the defense, and "
             f"*adaptive* APGD-CE {s['adaptive_steps']} steps through the whole pipeline"
             + (f" (EOT {', '.join(map(str, eot))} for a random purifier); " if eot else "; ") +
             "**worst** — the figure to read — is per image the worst of blind and adaptive: an image counts only if "
             "the pipeline reads it right clean and after both attacks, on each of R fresh noise draws for a random "
             "purifier (the column beside the mean counts the majority of the R draws, what a camera loop that votes "
             "over frames sees).", "",
             f"Accuracy %. Sampling error: a figure p on n = {report['n']} images has the binomial standard error "
             f"√(p(1−p)/n), at most ±{report['sampling_error_points']:.1f} points (±"
             f"{1.96 * report['sampling_error_points']:.1f} for 95 %). The mean is over conv, patch, flow and "
             "additive (not all). Without a purifier the blind attack differentiates the whole deployed model, so "
             "the adaptive figure is the blind one (–). Latency: the exported FP32 pipeline in ONNX Runtime on this "
             f"CPU, one crop, {s['threads']} thread(s), the runtime's full step (— where not measured).", "",
             "| defense | classifier | clean | conv | patch | flow | additive | all | mean of four, worst | "
             "… by majority of R | R | ORT CPU ms / crop |",
             "|---|---|---:|" + "---:|" * (len(ATTACKS) + 4)]
    lines += [_table_row(r) for r in rows]
    missing = [r for r in rows if r.get("missing")]
    if missing:
        lines += ["", f"The adversarially trained classifier `{missing[0]['classifier']}` is {NOT_TRAINED}: its rows "
                  "are measured once it ships (or with `--at-classifier CHECKPOINT`)."]
    if report.get("not_run"):
        lines += ["", f"Not measured in this run: {', '.join(report['not_run'])} (`--rows` selects them; the same "
                  "`--cache` keeps the rows above)."]
    lines += ["", "Each row's commands (the script calls the same function, with the shared `--cache`):", "", "```"]
    lines += [c for r in rows for c in (r.get("commands") or [])]
    return "\n".join(lines + ["```"]) + "\n"


README_BEGIN = "<!-- robustness table: written by benchmarks/robustness.py --readme; do not edit by hand -->"
README_END = "<!-- end of robustness table -->"


def readme_block(report: dict[str, Any], page: str) -> str:
    """The README's short form of the table: clean, the worst-case mean and latency per measured row."""
    rows = [r for r in report["rows"] if not r.get("missing")]
    lines = [README_BEGIN,
             f"Per image the worst of a blind and an adaptive attack (the figure to read; definitions in [{page}]({page})), "
             f"GTSRB validation tracks, n = {report['n']} (±{1.96 * report['sampling_error_points']:.0f} points at "
             f"95 %), `{report['command']}`:", "",
             "| defense | classifier | clean % | conv / patch / flow / additive, worst % | mean of four % | ORT CPU ms / crop |",
             "|---|---|---:|---|---:|---:|"]
    for r in rows:
        fams = " / ".join(_pct(r["worst"][f]) for f in FAMILIES)
        ms = "—" if r["latency_ms"] is None else f"{r['latency_ms']:.2f}"
        lines.append(f"| {r['defense']} | {r['classifier_label']} | {_pct(r['clean'])} | {fams} | "
                     f"**{_pct(r['mean_worst'])}** | {ms} |")
    if report.get("not_run"):
        lines += ["", f"Not measured yet: {', '.join(report['not_run'])}."]
    return "\n".join(lines + [README_END])


def _readme_markers(readme: Path) -> tuple[str, int, int]:
    """The README's text and where its block begins and ends; a README without both markers is refused (checked
    before any row is measured), never appended to."""
    try:
        text = readme.read_text()
    except OSError as exc:
        sys.exit(f"--readme {readme}: cannot read it ({exc.strerror})")
    begin, end = text.find(README_BEGIN), text.find(README_END)
    if begin < 0 or end < begin:
        sys.exit(f"--readme {readme}: expected the markers {README_BEGIN!r} … {README_END!r} in it")
    return text, begin, end


def replace_readme_block(readme: Path, block: str) -> None:
    """Put ``block`` between the README's markers, in place of what was there."""
    text, begin, end = _readme_markers(readme)
    readme.write_text(text[:begin] + block + text[end + len(README_END):])


def _parse(argv: Optional[list[str]]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", help="GTSRB folder or zip (the track-validation split is scored)")
    ap.add_argument("--smoke", action="store_true",
                    help=f"synthetic signs, 6 images, 2 attack steps, rows {SMOKE_ROWS} unless --rows: checks the script")
    ap.add_argument("--rows", help="comma list of rows (default: all): " + ", ".join(row_plan()))
    ap.add_argument("--classifier", default=None, help="the standard classifier (default: the shipped default)")
    ap.add_argument("--at-classifier", default=None,
                    help=f"the adversarially trained classifier, registered name or checkpoint (default: {AT_DEFAULT} "
                         "where its weights ship, else its rows are marked not yet trained)")
    ap.add_argument("--n", type=int, default=512, help="images")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=100, help="APGD iterations of the blind attack")
    ap.add_argument("--adaptive-steps", type=int, default=20, help="APGD iterations of the adaptive attack")
    ap.add_argument("--resubmit", type=int, default=None,
                    help="noise draws per scored image (default: 5 for a random pipeline, 1 for another)")
    ap.add_argument("--no-latency", nargs="?", const="*", default=None,
                    help="skip the ORT export and latency of these rows (comma list; alone: every row)")
    ap.add_argument("--latency-iters", type=int, default=200)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--cache", type=Path, default=Path("runs/robustness"),
                    help="adversarial examples, readings, exported models and finished rows: a rerun resumes")
    ap.add_argument("--md", type=Path, default=Path("docs/robustness.md"), help="the page (the JSON goes beside it)")
    ap.add_argument("--readme", type=Path, default=None,
                    help="also rewrite the short table between the markers of this README (e.g. README.md)")
    args = ap.parse_args(argv)
    if args.smoke:
        args.data, args.n, args.steps, args.adaptive_steps, args.latency_iters = "synth", 6, 2, 2, 3
        args.rows = args.rows or SMOKE_ROWS
    elif not args.data:
        ap.error("--data is required (or --smoke)")
    if args.readme is not None:
        _readme_markers(args.readme)
    if args.no_latency is not None:
        args.no_latency = list(row_plan()) if args.no_latency == "*" else select_rows(args.no_latency, row_plan(),
                                                                                         "--no-latency")
    return args


def main(argv: Optional[list[str]] = None) -> None:
    args = _parse(argv)
    keys = select_rows(args.rows, row_plan())
    use_threads(args.threads)
    from edgepure.models.registry import list_classifiers
    from edgepure.runtime.machine import describe_machine

    args.at_classifier = at_classifier(args.at_classifier, list_classifiers(pretrained=True))
    log = Log()
    table = Table(args, log)
    keep = {k: getattr(args, k) for k in ("data", "n", "seed", "steps", "adaptive_steps", "resubmit", "latency_iters",
                                          "threads")}
    rows = []
    for key in keys:
        side = row_plan()[key][1]
        if side == "at" and args.at_classifier is None:
            rows.append(not_trained_row(key, None))
            continue
        row_keep = {**keep, "classifier": table.specs[side], "weights": table.weights(side),
                    "latency": args.no_latency is None or key not in args.no_latency}
        rows.append(resumed_row(args.cache / "rows" / f"{key}.json", row_keep, lambda key=key: table.measure(key), log))
    m = describe_machine()
    report = {"settings": {**keep, "cache": str(args.cache), "classifier": table.specs["std"],
                           "at_classifier": args.at_classifier},
              "rows": rows, "not_run": [k for k in row_plan() if k not in keys], "n": len(table.data),
              "sampling_error_points": sampling_error_points(len(table.data)),
              "machine": f"{m['cpu']} ({m['logical_cpus']} logical CPUs)",
              "data": "synthetic renders" if args.smoke else f"GTSRB track-validation split ({args.data})",
              "command": " ".join(["python", "benchmarks/robustness.py", *(argv if argv is not None else sys.argv[1:])]),
              "date": time.strftime("%Y-%m-%d")}
    args.md.parent.mkdir(parents=True, exist_ok=True)
    args.md.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    args.md.write_text(render(report))
    if args.readme is not None:
        replace_readme_block(args.readme, readme_block(report, args.md.as_posix()))
    print(args.md.read_text())
    log(f"wrote {args.md} and {args.md.with_suffix('.json')}")


if __name__ == "__main__":
    main()

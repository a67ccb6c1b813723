"""The benchmark report: what each purifier costs and buys, measured in one run, written to BENCHMARKS.md.

    python benchmarks/report.py --data ../shared/data/gtsrb            # the published report (109 min here, 1 thread)
    python benchmarks/report.py --smoke --out /tmp/report --md /tmp/report/BENCHMARKS.md   # seconds, synthetic signs

For every purifier (``--purifiers``; ``none`` is the classifier alone, the floor) on the GTSRB
track-validation split:

- robust accuracy per attack family (conv = blur kernel, patch = occlusion, flow = distortion, additive,
  all = every family at once) under the blind threat (APGD on the classifier; ``--n`` images) and the
  adaptive one (APGD through the purifier's full gradient; ``--adaptive-n`` images), scored three ways:
  torch eager, the exported FP32 graph in ONNX Runtime (CPU) and its INT8 calibration. The attacks are
  computed once, on the PyTorch twin, and every backend scores the same adversarial images;
- latency of one crop (batch 1, ``--threads``): torch eager purify + classify, and the runtime's full step
  (uint8 frame → top-k) on the FP32 and INT8 model directories;
- FLOPs per crop of the exported pipeline and the fraction of this machine's measured peak it reaches;
- the NAPPure K-sweep (``--sweep-kind``, ``--sweep-steps``) on its matching attack, next to the paper's
  500-step reference (``--reference-n`` images); ORT latency for K ≤ ``--sweep-ort-max`` (a NAPPure export
  takes minutes per unrolled step on a CPU).

Everything is measured in the same run, on the machine described at the top of the report; a Pareto plot
(robust accuracy against latency) and the K-sweep plot are written next to the Markdown.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional

ATTACKS = ("conv", "patch", "flow", "additive", "all")
MATCH = {"blur": ["conv"], "occlusion": ["patch"], "distortion": ["flow"], "additive": ["additive"], "joint": list(ATTACKS)}
DEFAULT_PURIFIERS = ("none,gaussian,median,bitdepth,ncis,hetero_diffusion,coup:steps=4,nappure:kind=distortion:steps=4,"
                     "nappure:kind=joint:steps=4")


def parse_purifier(spec: str) -> tuple[str, str, dict[str, Any]]:
    """``name[:key=value...]`` → (label, registered name, settings); ``nappure:kind=joint:steps=8``."""
    name, *pairs = spec.split(":")
    kw: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            sys.exit(f"--purifiers: expected key=value after {name!r}, got {pair!r}")
        try:  # JSON literals: numbers, true/false, null (a setting switched off); anything else is a string
            kw[key] = json.loads(value)
        except json.JSONDecodeError:
            kw[key] = value
    label = name if not kw else name + "-" + "-".join(f"{'K' if k == 'steps' else ''}{v}" for k, v in kw.items())
    return label, name, kw


def use_threads(n: int) -> None:
    """Pin torch and the BLAS/OpenMP pools to ``n`` threads (the variables before torch is first imported)."""
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(n)
    import torch

    torch.set_num_threads(n)


class Log:
    def __init__(self) -> None:
        self.t0 = time.perf_counter()

    def __call__(self, msg: str) -> None:
        print(f"[{time.perf_counter() - self.t0:7.1f} s] {msg}", file=sys.stderr, flush=True)


def torch_latency_ms(classifier: Any, purifier: Any, x: Any, iters: int, warmup: int = 2) -> float:
    """Median wall time of purify + classify for one crop in torch eager (gradients only where the purifier
    needs them: NAPPure's steps differentiate its prior)."""
    import numpy as np
    import torch

    from edgepure.export.voting import pipeline_module

    model = pipeline_module(purifier, classifier) if purifier is not None else None  # votes, where the purifier votes
    noise = model.sample_noise(x, torch.Generator().manual_seed(0)) if model is not None else None
    ctx = contextlib.nullcontext if getattr(purifier, "needs_autograd", False) else torch.no_grad

    def step() -> None:
        with ctx():
            (model(x, noise) if model is not None else classifier(x)).argmax(1)

    for _ in range(warmup):
        step()
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return 1e3 * float(np.median(times))


def runtime_latency_ms(directory: Path, iters: int, threads: int) -> float:
    from edgepure.runtime.bench import bench_directory
    from edgepure.runtime.manifest import load_manifest

    role = "pipeline" if "pipeline" in load_manifest(directory)["models"] else "classifier"
    rep = bench_directory(directory, batches=[1], warmup=max(2, iters // 10), iters=iters, threads=threads, roles=[role])
    return float(rep["results"][0]["runtime_step"]["p50_ms"])


def graph_mflops(directory: Path) -> float:
    import onnx

    from edgepure.export.flops import count_macs
    from edgepure.runtime.manifest import load_manifest

    models = load_manifest(directory)["models"]
    role = "pipeline" if "pipeline" in models else "classifier"
    return 2 * count_macs(onnx.load(str(directory / models[role]["file"])))["macs"] / 1e6


def export_fp32(purifier: Any, name: str, classifier: Any, out: Path, sample: Any, class_names: Any) -> Path:
    """The FP32 model directory ``out`` of ``purifier`` (registered as ``name``; None: the classifier alone) →
    ``classifier``, its input shape taken from ``sample`` (N×C×H×W floats)."""
    from edgepure.export.pipeline import export_pipeline

    info = {"name": name, "config": purifier.config()} if purifier is not None else None
    export_pipeline(purifier, classifier, out, sample, class_names=class_names,
                    classifier_info={"name": classifier.edgepure_name}, purifier_info=info, overwrite=True)
    return out


def robust_command(data: Any, model: Any, n: int, seed: int, name: str, kw: dict[str, Any], threat: str, steps: int,
                   extra: tuple[str, ...] = ()) -> str:
    """The ``edgepure eval robust`` command that measures one defense under one threat (``--json``)."""
    parts = ["edgepure eval robust", f"--data {data}", f"--model {model}", f"--n {n}", f"--seed {seed}",
             f"--defense {name}"]
    parts += [f"--defense-arg {k}={v}" for k, v in kw.items()]
    parts += [f"--threat {threat}", f"--steps {steps}", *extra]
    return " ".join(parts) + " --json"


def resumed_row(path: Path, keep: dict[str, Any], measure: Callable[[], dict[str, Any]],
                log: Callable[[str], None]) -> dict[str, Any]:
    """A table row kept in ``path``: read back when it was measured with the run settings ``keep``, else measured
    and written (so an interrupted run picks up after its last finished row)."""
    saved = json.loads(path.read_text()) if path.exists() else None
    if saved is not None and saved.get("settings_of_run") == keep:
        log(f"{saved.get('key', saved.get('label'))}: done earlier ({path})")
        return saved
    row = measure()
    row["settings_of_run"] = keep
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(row, indent=2) + "\n")
    return row


def _accuracy(result: dict[str, Any], threat: str) -> dict[str, float]:
    row = {"clean": result["clean_accuracy"]}
    row.update({a: r[threat] for a, r in result["robust_accuracy"].items()})
    row["mean"] = result["average"][threat]
    return row


class Bench:
    """One run's shared state: data, classifier, attack settings and the adversarial-example cache."""

    def __init__(self, args: argparse.Namespace, log: Callable[[str], None]) -> None:
        from edgepure.data import open_dataset
        from edgepure.models.registry import load_classifier

        self.args, self.log = args, log
        spec = "synth" if args.smoke else args.data
        self.data = open_dataset(spec, "val", n=args.n, seed=args.seed)
        self.data_adaptive = self.data.take(list(range(min(args.adaptive_n, len(self.data)))))
        self.data_reference = self.data.take(list(range(min(args.reference_n, len(self.data)))))
        calib = open_dataset(spec, "train", n=args.calib_n, seed=args.seed)
        self.calib = calib.as_float_nchw()
        self.described = "synthetic renders" if args.smoke else f"GTSRB track-validation split ({args.data})"
        self.classifier = load_classifier(args.classifier)
        self.names = self.classifier.pretrained_cfg["class_names"]
        self.cache = args.out / "advcache"
        self.models = args.out / "models"
        self.exported: dict[str, Path] = {}

    def robust(self, purifier: Any, threat: str, scorer: Any = None, attacks: Any = ATTACKS, data: Any = None) -> dict[str, Any]:
        from edgepure.evaluate.robust import benchmark

        a = self.args
        steps = a.steps if threat == "blind" else a.adaptive_steps
        return benchmark(self.classifier, data if data is not None else
                         (self.data if threat == "blind" else self.data_adaptive), purifier, list(attacks), [threat],
                         steps=steps, seed=a.seed, scorer=scorer, cache_dir=self.cache)

    def export(self, purifier: Any, name: str, label: str) -> Path:
        """The FP32 model directory of ``purifier`` (one export per purifier setting in a run)."""
        info = {"name": name, "config": purifier.config()} if purifier is not None else None
        key = json.dumps(info, sort_keys=True, default=str)
        if key not in self.exported:
            self.exported[key] = export_fp32(purifier, name, self.classifier, self.models / f"{label}-fp32",
                                             self.data.as_float_nchw()[:8], self.names)
        return self.exported[key]

    def calibrate(self, fp32: Path, label: str) -> Path:
        from edgepure.calibration.directory import calibrate_directory

        out = self.models / f"{label}-int8"
        calibrate_directory(fp32, out, self.calib, method="entropy", scope="forward", purifier_n=self.args.purifier_n,
                            data=f"{self.args.calib_n} training-split images", seed=self.args.seed, overwrite=True)
        return out


def measure_purifier(b: Bench, spec: str) -> dict[str, Any]:
    import torch

    from edgepure.evaluate.exported import OnnxScorer
    from edgepure.purifiers import create_purifier

    a, log = b.args, b.log
    label, name, kw = parse_purifier(spec)
    pur = None if name == "none" else create_purifier(name, **kw)
    threats = ["blind"] + (["adaptive"] if pur is not None else [])
    calls = pur.calls_per_image() if callable(getattr(pur, "calls_per_image", None)) else {}  # type: ignore[union-attr]
    row: dict[str, Any] = {"label": label, "purifier": name, "settings": kw, "calls_per_image": calls,
                           "config": pur.config() if pur is not None else {}, "accuracy": {}, "latency_ms": {}}
    t0 = time.perf_counter()
    log(f"{label}: torch eager, {', '.join(threats)}")
    row["accuracy"]["torch"] = {t: _accuracy(b.robust(pur, t), t) for t in threats}
    log(f"{label}: export FP32, calibrate INT8")
    dirs = {"ort-fp32": b.export(pur, name, label)}
    dirs["ort-int8"] = b.calibrate(dirs["ort-fp32"], label)
    for backend, d in dirs.items():
        log(f"{label}: {backend}, {', '.join(threats)}")
        scorer = OnnxScorer(d, pur, threads=a.threads)
        row["accuracy"][backend] = {t: _accuracy(b.robust(pur, t, scorer=scorer), t) for t in threats}
    log(f"{label}: latency")
    x1 = torch.from_numpy(b.data.as_float_nchw()[:1])
    row["latency_ms"]["torch"] = round(torch_latency_ms(b.classifier, pur, x1, a.latency_iters_torch), 3)
    for backend, d in dirs.items():
        row["latency_ms"][backend] = round(runtime_latency_ms(d, a.latency_iters, a.threads), 3)
    row["mflops_per_crop"] = round(graph_mflops(dirs["ort-fp32"]), 2)
    row["seconds"] = round(time.perf_counter() - t0, 1)
    return row


def measure_sweep(b: Bench) -> dict[str, Any]:
    """Robust + clean accuracy of NAPPure ``kind`` on its matching attack(s) and latency, against K; then the
    500-step reference on ``--reference-n`` of the same images."""
    import torch

    from edgepure.purifiers import create_purifier

    a, log = b.args, b.log
    kind, attacks = a.sweep_kind, MATCH[a.sweep_kind]
    x1 = torch.from_numpy(b.data.as_float_nchw()[:1])
    rows = []
    for k in a.sweep_steps:
        log(f"K-sweep: nappure {kind} K={k}")
        pur = create_purifier("nappure", kind=kind, steps=k)
        res = b.robust(pur, "blind", attacks=attacks)
        sub = b.robust(pur, "blind", attacks=attacks, data=b.data_reference)
        latency = {"torch": round(torch_latency_ms(b.classifier, pur, x1, a.latency_iters_torch), 3)}
        if k <= a.sweep_ort_max:  # exporting NAPPure takes minutes per step: only the cheap end is exported here
            d = b.export(pur, "nappure", f"nappure-{kind}-K{k}")
            latency["ort-fp32"] = round(runtime_latency_ms(d, a.latency_iters, a.threads), 3)
        rows.append({"steps": k, "accuracy": _accuracy(res, "blind"), "accuracy_reference_images": _accuracy(sub, "blind"),
                     "latency_ms": latency})
    log(f"K-sweep: nappure {kind} reference ({len(b.data_reference)} images)")
    pur = create_purifier("nappure", kind=kind, mode="reference", **({"steps": a.reference_steps} if a.reference_steps else {}))
    res = b.robust(pur, "blind", attacks=attacks, data=b.data_reference)
    ref = {"steps": pur.steps, "n": len(b.data_reference), "accuracy": _accuracy(res, "blind"),
           "latency_ms": {"torch": round(torch_latency_ms(b.classifier, pur, x1, 1, warmup=0), 1)}}
    return {"kind": kind, "attacks": attacks, "rows": rows, "reference": ref}


def remeasure_latency(report: dict[str, Any], models: Path, threads: int, iters: int, iters_torch: int,
                      log: Callable[[str], None]) -> None:
    """Time every row of a finished run again, in one pass (same model directories, same settings): for a
    run whose accuracy pass shared the machine, so that all its latencies come from one quiet pass."""
    import torch

    from edgepure.data import open_dataset
    from edgepure.models.registry import load_classifier
    from edgepure.purifiers import create_purifier

    s = report["settings"]
    clf = load_classifier(s["classifier"])
    x1 = torch.from_numpy(open_dataset("synth" if s["smoke"] else s["data"], "val", n=s["n"], seed=s["seed"])
                          .as_float_nchw()[:1])
    for row in report["purifiers"]:
        log(f"latency: {row['label']}")
        pur = None if row["purifier"] == "none" else create_purifier(row["purifier"], **row["settings"])
        row["latency_ms"] = {"torch": round(torch_latency_ms(clf, pur, x1, iters_torch), 3),
                             **{f"ort-{p}": round(runtime_latency_ms(models / f"{row['label']}-{p}", iters, threads), 3)
                                for p in ("fp32", "int8")}}
    sw = report["sweep"]
    for r in sw["rows"]:
        log(f"latency: NAPPure {sw['kind']} K={r['steps']}")
        pur = create_purifier("nappure", kind=sw["kind"], steps=r["steps"])
        r["latency_ms"]["torch"] = round(torch_latency_ms(clf, pur, x1, iters_torch), 3)
        if "ort-fp32" in r["latency_ms"]:
            d = models / f"nappure-{sw['kind']}-K{r['steps']}-fp32"
            r["latency_ms"]["ort-fp32"] = round(runtime_latency_ms(d, iters, threads), 3)
    ref = sw["reference"]
    pur = create_purifier("nappure", kind=sw["kind"], mode="reference", steps=ref["steps"])
    ref["latency_ms"]["torch"] = round(torch_latency_ms(clf, pur, x1, 1, warmup=0), 1)
    report["latency_pass"] = time.strftime("%Y-%m-%d %H:%M")


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", help="GTSRB folder or zip (the track-validation split is scored)")
    ap.add_argument("--smoke", action="store_true", help="synthetic signs and tiny settings: checks the script, not the numbers")
    ap.add_argument("--purifiers", default=DEFAULT_PURIFIERS, help="comma list of name[:key=value...]")
    ap.add_argument("--classifier", default=None, help="registered classifier with shipped weights (default: the shipped default classifier)")
    ap.add_argument("--n", type=int, default=256, help="images under the blind threat")
    ap.add_argument("--adaptive-n", type=int, default=32, help="images under the adaptive threat (the first of --n)")
    ap.add_argument("--steps", type=int, default=100, help="APGD iterations, blind")
    ap.add_argument("--adaptive-steps", type=int, default=20, help="APGD iterations, adaptive")
    ap.add_argument("--calib-n", type=int, default=256, help="INT8 calibration images (training split)")
    ap.add_argument("--purifier-n", type=int, default=32, help="of which calibrate the purifier's convolutions")
    ap.add_argument("--sweep-kind", default="distortion", choices=sorted(MATCH))
    ap.add_argument("--sweep-steps", default="1,2,4,8,16")
    ap.add_argument("--sweep-ort-max", type=int, default=4, help="export and time in ORT the sweep's K up to this")
    ap.add_argument("--reference-n", type=int, default=32, help="images for the 500-step reference")
    ap.add_argument("--reference-steps", type=int, default=0, help="override the reference's iterations (0: the paper's)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--latency-iters", type=int, default=200)
    ap.add_argument("--latency-iters-torch", type=int, default=30)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("runs/report"))
    ap.add_argument("--md", type=Path, default=Path("BENCHMARKS.md"))
    ap.add_argument("--figures", type=Path, default=Path("benchmarks/figures"), help="where the PNG figures go")
    ap.add_argument("--note", default="", help="a remark on the run's conditions, printed under the machine")
    ap.add_argument("--from-json", type=Path, help="re-render the Markdown and figures of a finished run's report.json")
    ap.add_argument("--retime", action="store_true",
                    help="with --from-json: time every row again in one pass (its model directories must be in --out)")
    return ap


def _rerender(args: argparse.Namespace) -> None:
    """``--from-json``: the Markdown and figures of a finished run again (with ``--retime``, its latencies measured
    again first)."""
    from report_render import write_report

    report = json.loads(args.from_json.read_text())
    report["settings"].setdefault("classifier", "signnet_s")  # reports from before --classifier used signnet_s
    report["note"] = args.note or report.get("note", "")
    if args.retime:
        use_threads(args.threads)
        remeasure_latency(report, args.out / "models", args.threads, args.latency_iters, args.latency_iters_torch, Log())
    args.from_json.write_text(json.dumps(report, indent=2) + "\n")
    for path in write_report(report, args.md, args.figures):
        print(f"wrote {path}", file=sys.stderr)


def _smoke(args: argparse.Namespace) -> None:
    """``--smoke``: tiny settings that check the script, not the numbers (the purifiers and the sweep only where they
    were left at their defaults)."""
    args.n, args.adaptive_n, args.steps, args.adaptive_steps = min(args.n, 8), min(args.adaptive_n, 4), 2, 2
    args.calib_n, args.purifier_n, args.reference_n = 8, 2, min(args.reference_n, 2)
    args.reference_steps = args.reference_steps or 3
    args.latency_iters, args.latency_iters_torch = 5, 2
    if args.purifiers == DEFAULT_PURIFIERS:
        args.purifiers = "none,median,nappure:kind=additive:steps=1"
        args.sweep_ort_max = 1
    if args.sweep_steps == "1,2,4,8,16":
        args.sweep_steps = "1"
    if args.sweep_kind == "distortion":
        args.sweep_kind = "additive"  # the same purifier as above: one export serves both


def _measure(args: argparse.Namespace, argv: Optional[list[str]]) -> None:
    """Measure every row and the sweep, then write report.json, the Markdown and the figures."""
    from report_render import write_report

    from edgepure.runtime.machine import describe_machine, matmul_peak_gflops

    log = Log()
    t0 = time.perf_counter()
    args.out.mkdir(parents=True, exist_ok=True)
    machine = describe_machine()
    machine["threads_used"] = args.threads
    machine["matmul_peak_gflops"] = matmul_peak_gflops()
    log(f"machine: {machine['cpu']}, {machine['logical_cpus']} CPUs, peak {machine['matmul_peak_gflops']} GFLOP/s")
    b = Bench(args, log)
    args.classifier = b.classifier.edgepure_name  # recorded by name: the default may change
    rows = [measure_purifier(b, spec) for spec in args.purifiers.split(",") if spec]
    sweep = measure_sweep(b)
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    report = {"machine": machine, "settings": settings, "note": args.note, "data": b.described, "n": len(b.data),
              "adaptive_n": len(b.data_adaptive), "purifiers": rows, "sweep": sweep,
              "command": " ".join(["python", "benchmarks/report.py", *(argv if argv is not None else sys.argv[1:])]),
              "date": time.strftime("%Y-%m-%d"), "minutes": round((time.perf_counter() - t0) / 60, 1)}
    (args.out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    for path in write_report(report, args.md, args.figures):
        log(f"wrote {path}")


def main(argv: Optional[list[str]] = None) -> None:
    ap = _parser()
    args = ap.parse_args(argv)
    if args.from_json:
        _rerender(args)
        return
    if args.smoke:
        _smoke(args)
    elif not args.data:
        ap.error("--data is required (or --smoke)")
    args.sweep_steps = [int(k) for k in args.sweep_steps.split(",") if k]
    use_threads(args.threads)
    _measure(args, argv)


if __name__ == "__main__":
    main()

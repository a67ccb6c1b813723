"""The latency budget under load: run a variant set with ``--budget-ms``, load the CPU mid-run, summarise.

    python benchmarks/budget.py --model models/np-add --budget-ms 115 [--load-at 20 --load-for 25 --total 70]

Starts ``edgepure run synth://… --budget-ms T --threads 1`` and, ``--load-at`` seconds later, two CPU-bound
processes for ``--load-for`` seconds; after ``--total`` seconds it sends Ctrl-C (SIGINT). Prints the
start-up timing, every switch, and a per-window table of frames, median latency and variants from the
JSON lines.
"""

from __future__ import annotations

import argparse
import json
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--budget-ms", type=float, required=True)
    ap.add_argument("--load-at", type=float, default=20.0)
    ap.add_argument("--load-for", type=float, default=25.0)
    ap.add_argument("--total", type=float, default=70.0)
    ap.add_argument("--hogs", type=int, default=2)
    ap.add_argument("--window", type=float, default=3.0, help="seconds per row of the table")
    args = ap.parse_args()
    out = Path(tempfile.mkdtemp()) / "budget.jsonl"
    cmd = [sys.executable, "-m", "edgepure.cli.main", "run", "synth://?n=1000000&hold=10", str(out), "--model",
           str(args.model), "--threads", "1", "--budget-ms", str(args.budget_ms), "--json"]
    # Ctrl-C is what stops the run: give it the default SIGINT even when this script was started with SIGINT
    # ignored (nohup, a background job without job control), which the child would otherwise inherit
    run = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 300
    while not (out.is_file() and out.stat().st_size > 0):  # the clock starts with the first frame, after start-up
        if run.poll() is not None or time.monotonic() > deadline:
            run.kill()
            sys.exit(f"edgepure run produced no frame (exit {run.returncode}):\n{run.communicate()[1][-3000:]}")
        time.sleep(0.05)
    t0 = time.monotonic()
    time.sleep(args.load_at)
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(args.hogs)]
    time.sleep(args.load_for)
    for h in hogs:
        h.kill()
    time.sleep(max(0.0, args.total - (time.monotonic() - t0)))
    run.send_signal(signal.SIGINT)
    stdout, stderr = run.communicate(timeout=60)
    if run.returncode != 0:
        sys.exit(f"edgepure run failed ({run.returncode}):\n{stderr}")
    summary = json.loads(stdout)
    print(f"start-up: {summary['budget']['startup_ms']} ms; budget {args.budget_ms} ms")
    for s in summary["switches"]:
        print(f"frame {s['frame']}: {s['from']} → {s['to']} ({s['reason']})")
    recs = [json.loads(line) for line in out.read_text().splitlines()]
    start = recs[0]["time"]
    rows: dict[int, list[dict]] = {}
    for r in recs:
        rows.setdefault(int((r["time"] - start) // args.window), []).append(r)
    print("\n| time | frames | median latency ms | variants |\n|---|---:|---:|---|")
    for b, rs in sorted(rows.items()):
        counts: dict[str, int] = {}
        for r in rs:
            counts[r["variant"]] = counts.get(r["variant"], 0) + 1
        med = statistics.median(r["latency_ms"]["total"] for r in rs)
        print(f"| {b * args.window:.0f}–{(b + 1) * args.window:.0f} s | {len(rs)} | {med:.1f} | {counts} |")
    t = summary["latency_ms"]["total"]
    print(f"\n{summary['frames']} frames, stop: {summary['stop']}, accuracy {summary['accuracy']}, "
          f"p50/p95/p99 {t['p50_ms']}/{t['p95_ms']}/{t['p99_ms']} ms; load from {args.load_at:.0f} s to "
          f"{args.load_at + args.load_for:.0f} s after the first frame (start-up timing excluded)")


if __name__ == "__main__":
    main()

"""The camera loop's memory over a long run: RSS every ``--every`` frames of a torch-free ``run_stream``.

    python benchmarks/soak.py [--model DIR] [--frames 10000] [--every 1000] [--docs docs/runtime.md]

Without ``--model`` it exports the shipped classifier alone into a temporary folder first (PyTorch needed for
that step only). The loop runs in a subprocess with torch blocked, as on a device: rendered signs
(``synth://``, 100 frames a sign), temporal smoothing on, one JSON line per frame written to a file. Prints a
Markdown table of RSS against frames and the growth after warm-up (the first ``--warmup`` frames); with
``--docs`` it also rewrites the table between the ``soak`` markers of that page.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
BEGIN, END = "<!-- soak: begin (written by benchmarks/soak.py) -->", "<!-- soak: end -->"

CHILD = textwrap.dedent("""
    import json, sys

    class Block:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] == "torch":
                raise ImportError(name + " is blocked: the runtime must not need it")

    sys.meta_path.insert(0, Block())
    from edgepure.runtime.stream import Runner, open_output, open_source, run_stream

    model, frames, every, out = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]

    def rss_mb():
        for line in open("/proc/self/status"):
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024

    marks = {}
    def mark(record):
        i = record["frame"] + 1
        if i == 1 or i % every == 0:
            marks[i] = rss_mb()

    runner = Runner.from_directory(model, threads=1, smoothing=0.5)
    s = run_stream(open_source(f"synth://?n={frames}&hold=100"), runner, [open_output(out)], on_record=mark)
    print(json.dumps({"summary": s, "marks": marks}))
""")


def export_classifier(root: Path) -> Path:
    import edgepure
    from edgepure.data import open_dataset
    from edgepure.export.pipeline import export_pipeline

    clf = edgepure.load_classifier()
    out = root / "classifier"
    export_pipeline(None, clf, out, open_dataset("synth", "val", n=8).as_float_nchw(),
                    class_names=clf.pretrained_cfg["class_names"], classifier_info={"name": clf.edgepure_name})
    return out


def soak(model: Path, frames: int, every: int, tmp: Path) -> dict[str, Any]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-c", CHILD, str(model), str(frames), str(every), str(tmp / "r.jsonl")],
                       capture_output=True, text=True, env=env, check=False)
    if r.returncode != 0:
        raise SystemExit(f"the soak run failed:\n{r.stderr[-3000:]}")
    result = json.loads(r.stdout)
    result["marks"] = {int(k): v for k, v in result["marks"].items()}
    return result


def table(result: dict[str, Any], warmup: int, command: str) -> str:
    marks = result["marks"]
    base = marks.get(warmup, marks[min(marks)])
    s = result["summary"]
    lines = [f"`{command}` — {s['frames']} frames in {s['seconds']:.0f} s, {platform.python_version()}, "
             f"{platform.machine()}; RSS growth after frame {warmup:,}: "
             f"**{marks[max(marks)] - base:+.2f} MB** (from frame 1: {marks[max(marks)] - marks[min(marks)]:+.2f} MB)",
             "", "| frame | RSS (MB) | since frame " + f"{warmup:,} (MB) |", "|---:|---:|---:|"]
    for i in sorted(marks):
        lines.append(f"| {i:,} | {marks[i]:.2f} | {marks[i] - base:+.2f} |")
    return "\n".join(lines)


def write_docs(page: Path, text: str) -> None:
    body = page.read_text()
    if BEGIN not in body or END not in body:
        raise SystemExit(f"{page}: no soak markers ({BEGIN} … {END}) to write between")
    head, rest = body.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    page.write_text(f"{head}{BEGIN}\n{text}\n{END}{tail}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, help="model directory (default: the shipped classifier, exported now)")
    ap.add_argument("--frames", type=int, default=10_000)
    ap.add_argument("--every", type=int, default=1000)
    ap.add_argument("--warmup", type=int, default=2000, help="frames before the growth is counted")
    ap.add_argument("--docs", type=Path, help="a docs page whose soak block to rewrite")
    args = ap.parse_args()
    command = "python benchmarks/soak.py" + "".join(
        f" --{k} {v}" for k, v, default in (("model", args.model, None), ("frames", args.frames, 10_000),
                                            ("every", args.every, 1000), ("warmup", args.warmup, 2000))
        if v != default)
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model or export_classifier(Path(tmp))
        result = soak(model, args.frames, args.every, Path(tmp))
    text = table(result, args.warmup, command)
    print(text)
    if args.docs:
        write_docs(args.docs, text)


if __name__ == "__main__":
    main()

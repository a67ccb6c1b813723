"""``edgepure demo``: export, attack, purify and time the shipped models in one command."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from edgepure.cli.common import echo_json, parse_settings, user_errors


def demo(
    out: Annotated[Path, typer.Option(help="Folder for the models, demo.json, demo.png and demo.mp4.")] = Path("runs/demo"),
    data: Annotated[str, typer.Option(help="'synth' (rendered signs) or a GTSRB path (its validation tracks).")] = "synth",
    n: Annotated[int, typer.Option("--n", help="Images.")] = 64,
    purifier: Annotated[str, typer.Option(help="The purifier in front of the classifier.")] = "median",
    purifier_arg: Annotated[Optional[list[str]], typer.Option(help="Purifier setting key=value (repeatable).")] = None,
    attack: Annotated[str, typer.Option(help="Attack families, comma-separated.")] = "conv,patch,flow,additive",
    steps: Annotated[int, typer.Option(help="APGD steps per attack.")] = 20,
    seed: Annotated[int, typer.Option(min=0, help="Seed of the images and attacks.")] = 0,
    threads: Annotated[Optional[int], typer.Option(help="ONNX Runtime intra-op threads.")] = None,
    video: Annotated[bool, typer.Option(help="Write the overlay video.")] = True,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
) -> None:
    """Attack signs and read them with and without a purifier in the torch-free runtime.

    Reports accuracy clean, attacked and purified, latency, a figure and an overlay video (exports both models)."""
    from edgepure.demo import run_demo

    summary = run_demo(out, data=data, n=n, purifier=purifier, purifier_args=parse_settings(purifier_arg or [], "--purifier-arg"),
                       attacks=[a for a in attack.split(",") if a], steps=steps, seed=seed, threads=threads,
                       video=video, progress=lambda m: typer.echo(f"· {m}", err=True))
    if as_json:
        echo_json(summary)
        return
    typer.echo(_table(summary))


def _table(s: dict[str, Any]) -> str:
    lines = [f"{s['n']} {s['data']}; {s['attack']}", "",
             f"{'frames':<10} {'no defense':>11} {'purified (' + s['purifier'] + ')':>20}"]
    for r in s["accuracy"]:
        lines.append(f"{r['attack']:<10} {100 * r['no_defense']:>10.2f}% {100 * r['purified']:>19.2f}%")
    lat = s["latency_ms_p50"]
    lines += ["", f"latency per frame (p50, ONNX Runtime CPU): no defense {lat['no_defense']:.2f} ms, "
                  f"purified {lat['purified']:.2f} ms", f"wrote {', '.join(s['files'].values())} in {s['seconds']} s"]
    return "\n".join(lines)


demo_cmd = user_errors(demo)

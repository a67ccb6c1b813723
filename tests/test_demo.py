"""``edgepure demo`` end to end on tiny settings: its printed numbers are its JSON's."""

from __future__ import annotations

import json
import re
from pathlib import Path

from typer.testing import CliRunner

from edgepure.cli.main import app

cli = CliRunner()


def test_demo_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    r = cli.invoke(app, ["demo", "--out", str(out), "--n", "8", "--steps", "3", "--attack", "patch,additive",
                         "--threads", "1"])
    assert r.exit_code == 0, r.output
    summary = json.loads((out / "demo.json").read_text())
    assert [row["attack"] for row in summary["accuracy"]] == ["clean", "patch", "additive"]
    printed = {m.group(1): (float(m.group(2)), float(m.group(3)))
               for m in re.finditer(r"^(clean|patch|additive)\s+([\d.]+)%\s+([\d.]+)%$", r.stdout, re.M)}
    for row in summary["accuracy"]:
        assert printed[row["attack"]] == (round(100 * row["no_defense"], 2), round(100 * row["purified"], 2))
    clean = summary["accuracy"][0]
    assert clean["no_defense"] >= 0.75  # the shipped classifier on rendered signs
    assert summary["accuracy"][1]["no_defense"] < clean["no_defense"]  # the attack bites
    lat = summary["latency_ms_p50"]
    assert f"no defense {lat['no_defense']:.2f} ms" in r.stdout and lat["purified"] > 0
    for f in ("demo.json", "demo.png", "demo.mp4"):
        assert (out / f).stat().st_size > 500
    assert (out / "models" / "median" / "manifest.json").is_file()


def test_demo_rejects_unknown_attacks(tmp_path: Path) -> None:
    r = cli.invoke(app, ["demo", "--out", str(tmp_path / "d"), "--attack", "laser"])
    assert r.exit_code == 1 and "attacks must be among" in r.output

"""The ``edgepure`` command line. Each command group is its own module; heavy imports happen inside commands."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from edgepure import __version__
from edgepure.cli import build as build_cmd
from edgepure.cli import calibrate as calibrate_cmd
from edgepure.cli import data as data_cmd
from edgepure.cli import demo as demo_cmd
from edgepure.cli import eval as eval_cmd
from edgepure.cli import export as export_cmd
from edgepure.cli import models as models_cmd
from edgepure.cli import run as run_cmd
from edgepure.cli import train as train_cmd

app = typer.Typer(
    name="edgepure",
    help="Adversarial purification for robust traffic-sign recognition at the edge.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.add_typer(data_cmd.app, name="data")
app.add_typer(train_cmd.app, name="train")
app.add_typer(eval_cmd.app, name="eval")
app.add_typer(models_cmd.app, name="models")
app.command("export")(export_cmd.export_cmd)
app.command("inspect")(export_cmd.inspect_cmd)
app.command("calibrate")(calibrate_cmd.calibrate_cmd)
app.command("build")(build_cmd.build_cmd)
app.command("run")(run_cmd.run_cmd)
app.command("bench")(run_cmd.bench_cmd)
app.command("demo")(demo_cmd.demo_cmd)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"edgepure {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        Optional[bool], typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = None,
) -> None:
    """edgepure: train, export and run purify → classify pipelines for traffic signs."""


def main() -> None:
    app()


if __name__ == "__main__":
    main()

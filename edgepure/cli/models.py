"""``edgepure models``: what is registered and what ships trained."""

from __future__ import annotations

from typing import Annotated

import typer

from edgepure.cli.common import echo_json, user_errors

app = typer.Typer(help="List registered models and their shipped weights.", no_args_is_help=True)


@app.command("list")
@user_errors
def list_models(as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False) -> None:
    """Registered classifiers, image priors and purifiers, marking those with trained weights in the package."""
    from edgepure.models.registry import classifier_info, list_classifiers, list_priors
    from edgepure.purifiers.registry import purifier_info, list_purifiers

    rows = [classifier_info(n) for n in list_classifiers()]
    rows += [classifier_info(n, kind="prior") for n in list_priors()]
    rows += [purifier_info(n) for n in list_purifiers()]
    if as_json:
        echo_json({"models": rows})
        return
    for r in rows:
        flag = "trained" if r["pretrained"] else "       "
        star = "*" if r["default"] else " "
        typer.echo(f"{star} {r['name']:<16} {r['kind']:<11} {flag}  {r['description']}")

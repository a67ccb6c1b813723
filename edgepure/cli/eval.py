"""``edgepure eval``: accuracy of a model on a data split."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from edgepure.cli.common import DeviceOption, echo_json, parse_settings, user_errors

app = typer.Typer(help="Evaluate models.", no_args_is_help=True)


class Split(str, Enum):
    train = "train"
    val = "val"
    trainval = "trainval"
    test = "test"


def _check_classes(net: object, ds: object) -> None:
    from edgepure.runtime.errors import ModelError

    n_classes = int(getattr(net, "num_classes", 0))
    found = len(getattr(ds, "class_names"))
    if n_classes and found != n_classes:
        raise ModelError(f"the model has {n_classes} classes, the data set {found}")


@app.command("clean")
@user_errors
def clean(
    data: Annotated[str, typer.Option("--data", help="GTSRB folder/zip, CIFAR-10 folder/archive, or 'synth'.")],
    split: Annotated[Split, typer.Option(help="train / val (held-out tracks) / trainval / test (Final_Test).")] = Split.val,
    n: Annotated[Optional[int], typer.Option("--n", help="Evaluate a seeded subset of N images.")] = None,
    seed: Annotated[int, typer.Option(min=0, help="Seed of the subset (and of synthetic renders).")] = 0,
    model: Annotated[
        Optional[str], typer.Option(help="Registered name with shipped weights, or a checkpoint (.safetensors or run folder).")
    ] = None,
    roi: Annotated[bool, typer.Option(help="Crop GTSRB images to their annotated ROI first.")] = False,
    batch_size: Annotated[int, typer.Option(help="Batch size.")] = 256,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Top-1 accuracy of a classifier on clean images."""
    import time

    from edgepure.data import open_dataset
    from edgepure.evaluate.clean import evaluate_clean
    from edgepure.models.loading import resolve_classifier
    from edgepure.models.registry import DEFAULT_CLASSIFIER

    net = resolve_classifier(model)
    size = int(getattr(net, "input_size", 32))
    ds = open_dataset(data, split.value, n=n, seed=seed, size=size, roi=roi, progress=True)
    _check_classes(net, ds)
    t0 = time.perf_counter()
    metrics = evaluate_clean(net, ds, batch_size=batch_size, progress=True)
    elapsed = time.perf_counter() - t0
    result = {
        "model": model or DEFAULT_CLASSIFIER, "data": data, "split": split.value, "n": metrics["n"],
        "accuracy": metrics["accuracy"], "top5_accuracy": metrics["top5_accuracy"], "errors": metrics["errors"],
        "seconds": round(elapsed, 3), "images_per_second": round(metrics["n"] / elapsed, 1) if elapsed > 0 else None,
    }
    if as_json:
        result["per_class_accuracy"] = metrics["per_class_accuracy"]
        echo_json(result)
    else:
        typer.echo(f"{result['model']} on {data} [{split.value}]: top-1 {result['accuracy']:.4f} "
                   f"top-5 {result['top5_accuracy']:.4f} (n={result['n']}, {result['errors']} errors)")


class Method(str, Enum):
    apgd = "apgd"
    pgd = "pgd"


class Transfer(str, Enum):
    loss = "loss"
    first = "first"


def _csv_list(value: str, allowed: tuple[str, ...], what: str) -> list[str]:
    from edgepure.runtime.errors import ConfigError

    items = [v.strip() for v in value.split(",") if v.strip()]
    bad = [v for v in items if v not in allowed]
    if bad or not items:
        raise ConfigError(f"--{what}: unknown {', '.join(bad) or 'empty list'} (expected a comma list of {', '.join(allowed)})")
    return items


def _defended(model: Optional[str], defense: str, kind: Optional[str], defense_arg: Optional[list[str]],
              surrogate_arg: Optional[list[str]]) -> tuple[Any, Any, Any, Any]:
    """The classifier, purifier, ONNX scorer (for an exported --model) and surrogate that the options name."""
    from edgepure.models.loading import resolve_classifier

    scorer = None
    settings = parse_settings(defense_arg or [], "--defense-arg")
    if kind is not None:
        settings["kind"] = kind
    if settings and defense == "none":
        from edgepure.runtime.errors import ConfigError

        raise ConfigError(f"purifier settings {sorted(settings)} given without --defense")
    purifier: object = None
    if defense != "none":
        from edgepure.purifiers import create_purifier

        purifier = create_purifier(defense, **settings)
    if model is not None and (Path(model) / "manifest.json").is_file():
        from edgepure.evaluate.exported import OnnxScorer, load_twin
        from edgepure.runtime.errors import ConfigError
        from edgepure.runtime.manifest import load_manifest

        if defense != "none":
            raise ConfigError(f"--defense {defense}: an exported model directory carries its own purifier")
        net, purifier = load_twin(load_manifest(model))
        scorer = OnnxScorer(model, purifier)  # type: ignore[arg-type]
    else:
        net = resolve_classifier(model)
    surrogate = None
    if surrogate_arg:
        from edgepure.evaluate.robust import surrogate_of
        from edgepure.runtime.errors import ConfigError

        if purifier is None:
            raise ConfigError("--surrogate-arg given without a defense (--defense or an exported --model)")
        surrogate = surrogate_of(purifier, **parse_settings(surrogate_arg, "--surrogate-arg"))  # type: ignore[arg-type]
    return net, purifier, scorer, surrogate


@app.command("robust")
@user_errors
def robust(
    data: Annotated[str, typer.Option("--data", help="GTSRB folder/zip, CIFAR-10 folder/archive, or 'synth'.")],
    split: Annotated[Split, typer.Option(help="Data split (val = held-out tracks).")] = Split.val,
    n: Annotated[int, typer.Option("--n", help="Number of images (seeded subset).")] = 512,
    seed: Annotated[int, typer.Option(min=0, help="Seed of the subset, the attacks' restarts and the purifiers' noise.")] = 0,
    defense: Annotated[str, typer.Option(help="A registered purifier, or 'none'.")] = "none",
    kind: Annotated[Optional[str], typer.Option(help="Purifier kind (NAPPure: blur, occlusion, distortion, additive, joint).")] = None,
    defense_arg: Annotated[Optional[list[str]], typer.Option(help="Purifier setting key=value (repeatable), e.g. steps=8.")] = None,
    surrogate_arg: Annotated[Optional[list[str]], typer.Option(
        help="Craft the adaptive threats' examples through the defense with this setting changed (key=value, "
             "repeatable; its weights kept), e.g. steps=32 for mode=reference; they are scored on the defense as given.")] = None,
    attack: Annotated[str, typer.Option(help="Comma list of conv, patch, flow, additive, all.")] = "conv,patch,flow,additive,all",
    threat: Annotated[str, typer.Option(
        help="Comma list of blind, adaptive, bpda; or worst (alone): the blind threat, then the adaptive one (and bpda "
             "for a purifier that masks its gradient) on its survivors, shown as one column, the per-image worst case.")
    ] = "blind,adaptive",
    eot: Annotated[Optional[int], typer.Option(
        min=1, help="Expectation over transformation: gradient samples per attack step, for every threat "
                    "(default: 4 for the adaptive threats of a stochastic defense, else 1).")] = None,
    resubmit: Annotated[Optional[int], typer.Option(
        min=1, help="Score every image (clean and attacked) on R fresh noise draws: it counts only if read right on "
                    "each; the majority over the R draws is reported too (default: 5 for a stochastic defense, else 1).")
    ] = None,
    blind_transfer: Annotated[Transfer, typer.Option(
        help="Which iterate the blind attack sends to the defended pipeline: loss (the highest-loss one after all the "
             "steps) or first (the first that fooled the classifier).")] = Transfer.loss,
    steps: Annotated[int, typer.Option(help="Attack iterations.")] = 100,
    method: Annotated[Method, typer.Option(help="Attack algorithm.")] = Method.apgd,
    restarts: Annotated[int, typer.Option(help="Random restarts per attack.")] = 1,
    model: Annotated[Optional[str], typer.Option(
        help="Classifier (registered name or checkpoint; default: shipped), or an exported model directory: "
             "attacks run on its PyTorch twin and ONNX Runtime scores every image.")] = None,
    batch_size: Annotated[int, typer.Option(
        help="Attack batch size. Memory grows with it under the adaptive threat (second-order gradients through the "
             "purifier's unrolled steps): NAPPure at K 32 held 4.5 GB in batches of 8, 23.5 GB in one of 32.")] = 128,
    examples: Annotated[int, typer.Option(help="Images per attack in the examples figure.")] = 4,
    out: Annotated[Optional[Path], typer.Option(help="Write results.json, results.csv and figures here.")] = None,
    cache: Annotated[Optional[Path], typer.Option(
        help="Keep adversarial examples here and reuse them: blind ones for other defenses (same classifier, images, "
             "attack), adaptive ones for the same purifier scored again (e.g. its exported --model). Each batch is kept "
             "as it is done: the same command after an interruption resumes after the last finished batch, and the same "
             "command in several processes (or machines sharing the folder) splits the batches between them. The "
             "pipeline's predictions are kept too (scores/), so no batch is purified twice.")] = None,
    skip_misread: Annotated[bool, typer.Option(
        "--skip-misread", help="The adaptive threats attack only the images the defended pipeline reads right clean "
                               "(the others cannot count, so the figures measure the same for less work). The blind "
                               "threat attacks every image.")] = False,
    cascade: Annotated[bool, typer.Option(
        "--cascade", help="AutoAttack's protocol: each adaptive threat attacks only the images that survived the "
                          "clean reading and the threats before it in --threat, so its column counts the images that "
                          "survived them all (after blind: the worst of both) for the work of attacking the survivors. "
                          "The blind threat attacks every image.")] = False,
    device: DeviceOption = "cpu",
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object instead of the table.")] = False,
) -> None:
    """Clean and robust accuracy per attack and threat model (APGD-CE over each perturbation family)."""
    from edgepure.data import open_dataset
    from edgepure.evaluate.robust import benchmark
    from edgepure.models.loading import resolve_device
    from edgepure.models.registry import DEFAULT_CLASSIFIER
    from edgepure.perturb import PERTURBATIONS, budget_dataset

    dev = resolve_device(device)
    attacks = _csv_list(attack, PERTURBATIONS, "attack")
    threats = _csv_list(threat, ("blind", "adaptive", "bpda", "worst"), "threat")
    net, purifier, scorer, surrogate = _defended(model, defense, kind, defense_arg, surrogate_arg)
    ds = open_dataset(data, split.value, n=n, seed=seed, size=int(getattr(net, "input_size", 32)), progress=True)
    _check_classes(net, ds)
    budgets = budget_dataset(data)
    result = benchmark(
        net, ds, purifier, attacks, threats, method=method.value, steps=steps, eot=eot,  # type: ignore[arg-type]
        restarts=restarts, seed=seed, batch_size=batch_size, dataset=budgets, progress=True,
        keep_examples=examples if out is not None else 0, scorer=scorer, cache_dir=cache, device=dev,
        surrogate=surrogate, skip_misread=skip_misread, cascade=cascade, blind_transfer=blind_transfer.value,
        resubmit=resubmit,
    )
    if scorer is not None:
        result["scored_by"] = f"onnxruntime: {Path(model) / scorer.entry['file']}"  # type: ignore[arg-type]
    result.update(data=data, split=split.value, model=model or DEFAULT_CLASSIFIER, device=str(dev))
    _show(result, out, as_json)


def _show(result: dict[str, Any], out: Optional[Path], as_json: bool) -> None:
    """Write the report files (``--out``) and print the result as JSON or as the table."""
    from edgepure.evaluate.report import format_table, write_report

    if out is not None:
        for p in write_report(result, out):
            typer.echo(f"wrote {p}", err=True)
    plain = {k: v for k, v in result.items() if k != "examples"}
    if as_json:
        echo_json(plain)
    else:
        typer.echo(format_table(plain))


@app.command("worst")
@user_errors
def worst(
    results: Annotated[list[Path], typer.Argument(
        help="Two or more results of `edgepure eval robust` (its --json output saved to a file, or an --out folder) "
             "of one defense on the same images.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object instead of the table.")] = False,
) -> None:
    """The per-image worst case across separate robust evaluations of one defense.

    An image counts under an attack only if every run read it right clean and after every threat of that attack."""
    from edgepure.evaluate.worst import format_worst, load_result, worst_of

    loaded = [load_result(p) for p in results]
    stems = [p.stem if p.suffix else p.name for p in results]
    labels = stems if len(set(stems)) == len(stems) else [str(p) for p in results]
    combined = worst_of(loaded, labels)
    if as_json:
        echo_json(combined)
    else:
        typer.echo(format_worst(combined))

"""``edgepure export`` and ``edgepure inspect``: model directories of static ONNX graphs."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from edgepure.cli.common import echo_json, parse_settings, progress_lines, user_errors


class Precision(str, Enum):
    fp32 = "fp32"
    fp16 = "fp16"


class Noise(str, Enum):
    input = "input"
    graph = "graph"

def export(
    out: Annotated[Path, typer.Option("--out", help="Model directory to write (ONNX files + manifest.json).")],
    classifier: Annotated[Optional[str], typer.Option(
        help="Registered name, checkpoint, module:callable, or an ONNX file (the purifier graph is merged in front); "
             "default: the shipped default classifier.")] = None,
    purifier: Annotated[Optional[str], typer.Option(help="A registered purifier (none: classifier only).")] = None,
    steps: Annotated[Optional[list[int]], typer.Option(
        help="Purifier steps K (fixed-step purifiers; same as --purifier-arg steps=K). Repeat it for a variant set "
             "(one sub-directory per K, weakest first) that 'edgepure run --budget-ms' chooses from.")] = None,
    kind: Annotated[Optional[str], typer.Option(help="Purifier kind (e.g. NAPPure's perturbation type; same as --purifier-arg kind=...).")] = None,
    purifier_arg: Annotated[Optional[list[str]], typer.Option(help="Purifier setting key=value (repeatable).")] = None,
    batch: Annotated[int, typer.Option(help="Static batch size of the graphs.")] = 1,
    precision: Annotated[Precision, typer.Option(help="Precision baked into the graphs (inputs/outputs stay float32).")] = Precision.fp32,
    noise: Annotated[Noise, typer.Option(help="A stochastic purifier's noise: an input, or drawn inside the graph.")] = Noise.input,
    data: Annotated[str, typer.Option(help="Images for the parity check (GTSRB path or 'synth').")] = "synth",
    n: Annotated[int, typer.Option("--n", help="Parity images.")] = 64,
    atol: Annotated[Optional[float], typer.Option(
        help="Largest allowed |ONNX Runtime − PyTorch| on any output (default 1e-3 for fp32, 5e-2 for fp16).")] = None,
    force: Annotated[bool, typer.Option(
        help="Replace --out if it is a model directory or variant set edgepure wrote, or empty (never other folders).")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the manifest as JSON.")] = False,
) -> None:
    """Export the classifier, the purifier and the fused purify → classify pipeline as static ONNX graphs."""
    from edgepure.runtime.staging import check_replaceable

    # every option is checked before the first model loads: a mistake costs no export time
    settings, step_list = _purifier_settings(purifier, purifier_arg or [], kind, list(steps or []))
    check_replaceable(out, force)

    from edgepure.data import open_dataset
    from edgepure.export.pipeline import export_pipeline
    from edgepure.models.loading import load_classifier_source
    from edgepure.models.registry import DEFAULT_CLASSIFIER
    from edgepure.purifiers import create_purifier
    from edgepure.runtime.classes import GTSRB_CLASSES

    net, info = load_classifier_source(classifier or DEFAULT_CLASSIFIER)
    size = 32 if isinstance(net, Path) else int(getattr(net, "input_size", 32))
    images = open_dataset(data, "val", n=max(n, batch), size=size).as_float_nchw()
    cfg = getattr(net, "pretrained_cfg", {})
    variants = len(step_list) > 1

    def one(target: Path, extra: dict[str, Any], overwrite: bool) -> dict[str, Any]:
        pur = create_purifier(purifier, **settings, **extra) if purifier else None
        return export_pipeline(
            pur, net, target, images, batch=batch, noise=noise.value, precision=precision.value,
            class_names=cfg.get("class_names", GTSRB_CLASSES), preprocessing=cfg.get("preprocessing"),
            classifier_info=info, purifier_info={"name": purifier, "config": pur.config()} if pur is not None else None,
            atol=atol, overwrite=overwrite, progress=progress_lines(as_json, f"k{extra['steps']}: " if variants else ""),
        )

    if len(step_list) <= 1:
        manifest = one(out, {"steps": step_list[0]} if step_list else {}, force)
        if as_json:
            echo_json(manifest)
        else:
            typer.echo(_summary(manifest, out))
        return
    manifests = _export_variants(out, sorted(step_list), one, force)
    if as_json:
        echo_json({"variants": manifests})
    else:
        for name, manifest in manifests.items():
            typer.echo(_summary(manifest, out / name))
        typer.echo(f"{out}: variant set {', '.join(manifests)} (variants.json)")


def _purifier_settings(purifier: Optional[str], purifier_arg: list[str], kind: Optional[str],
                       step_list: list[int]) -> tuple[dict[str, Any], list[int]]:
    """The ``--purifier-arg`` settings (with ``--kind``) and the ``--steps`` values, checked."""
    from edgepure.runtime.errors import ConfigError

    settings = parse_settings(purifier_arg, "--purifier-arg")
    settings.update({k: v for k, v in (("kind", kind),) if v is not None})
    if step_list and "steps" in settings:
        raise ConfigError("give the steps once: --steps or --purifier-arg steps=K")
    if (settings or step_list) and not purifier:
        raise ConfigError(f"purifier settings {sorted(settings) + (['steps'] if step_list else [])} given without --purifier")
    if len(set(step_list)) != len(step_list):
        raise ConfigError(f"--steps repeats a value: {step_list}")
    for k in [*step_list, *([settings["steps"]] if "steps" in settings else [])]:
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ConfigError(f"the purifier's steps K must be whole numbers ≥ 1 (--steps, --purifier-arg steps=K), "
                              f"got {k!r}")
    return settings, step_list


def _export_variants(out: Path, step_list: list[int], one: Any, force: bool) -> dict[str, dict[str, Any]]:
    """Export one model directory per K into a temporary folder, then move the whole set into place."""
    import shutil

    from edgepure.runtime.staging import check_replaceable, replace_dir, staging_dir
    from edgepure.runtime.variants import write_variants

    check_replaceable(out, force)
    tmp = staging_dir(out)
    try:
        manifests = {f"k{k}": one(tmp / f"k{k}", {"steps": k}, False) for k in step_list}
        write_variants(tmp, [(name, name) for name in manifests])
        replace_dir(tmp, out, force)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifests


def _summary(manifest: dict[str, Any], where: Path) -> str:
    lines = [f"{where}: opset {manifest['opset']}, batch {manifest['batch']}, {manifest['precision']}"]
    for role, m in manifest["models"].items():
        ins = ", ".join(f"{i['name']}{i['shape']}" for i in m["inputs"])
        p = m.get("parity") or {}
        if "quantization" in m:
            par = f"{m.get('precision', 'int8')}, {m['quantization'].get('quantize_nodes', 0)} Q/DQ pairs"
        elif "max_abs_diff" in p:
            par = f"max|Δ| {p['max_abs_diff']:.2e}" + (f", top-1 agreement {p['top1_agreement']:.3f}"
                                                       if "top1_agreement" in p else "")
        else:
            par = p.get("note", "")
        lint = m["lint"]
        lines.append(f"  {role:<10} {m['file']:<16} {m['nodes']:>5} nodes {m['bytes'] / 1e6:6.2f} MB  in: {ins}  {par}  "
                     f"lint ({lint['target']}): {lint['errors']} errors")
        for issue in lint["issues"]:
            lines.append(f"      {issue['severity']}: [{issue['code']}] {issue['node']}: {issue['message']}")
    return "\n".join(lines)


def inspect(
    path: Annotated[Path, typer.Argument(help="A model directory or an ONNX file.")],
    target: Annotated[str, typer.Option(help="TensorRT line to lint for: 10.3 (JetPack 6), 10.15 or 11.")] = "10.3",
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Print a model directory's manifest (checking every file's sha256) and the TensorRT lint."""
    from edgepure.runtime.errors import ModelError
    from edgepure.runtime.manifest import MANIFEST_NAME, load_manifest

    if not path.exists():
        raise ModelError(f"{path}: no such file or directory")
    if path.is_dir():
        manifest = load_manifest(path)
        for m in manifest["models"].values():
            m["lint"] = _lint_file(path / m["file"], target)
        if as_json:
            echo_json(manifest)
        else:
            typer.echo(_summary(manifest, path))
        return
    lint = _lint_file(path, target)
    entry = None
    if (path.parent / MANIFEST_NAME).is_file():
        manifest = load_manifest(path.parent)
        entry = next((m for m in manifest["models"].values() if m["file"] == path.name), None)
    result = {"file": str(path), "manifest_entry": entry, "lint": lint}
    if as_json:
        echo_json(result)
    else:
        typer.echo(f"{path}: {'in manifest' if entry else 'no manifest entry'}; lint ({lint['target']}): {lint['errors']} errors")
        for issue in lint["issues"]:
            typer.echo(f"  {issue['severity']}: [{issue['code']}] {issue['node']}: {issue['message']}")


def _lint_file(path: Path, target: str) -> dict[str, Any]:
    import onnx

    from edgepure.export.lint import lint_model
    from edgepure.runtime.errors import ModelError

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # noqa: BLE001 - onnx raises DecodeError and friends for a bad file
        raise ModelError(f"{path}: not a readable ONNX model ({type(exc).__name__})") from None
    issues = [i.as_dict() for i in lint_model(model, target)]
    return {"target": f"TensorRT {target}", "errors": sum(i["severity"] == "error" for i in issues), "issues": issues}


export_cmd = user_errors(export)
inspect_cmd = user_errors(inspect)

"""``edgepure train``: train classifiers, the image priors the purifiers use, and NAPPure's learned settings."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from edgepure.cli.common import DeviceOption, echo_json, user_errors

app = typer.Typer(help="Train classifiers, image priors and purifier networks; learn NAPPure's settings.", no_args_is_help=True)


@app.callback()
@user_errors
def _launch(ctx: typer.Context) -> None:
    """Under torchrun only the commands that train with DDP run; the others would train N copies into one folder."""
    import os

    if os.environ.get("WORLD_SIZE", "1") == "1":  # not under torchrun (or one process): nothing to refuse, no torch
        return
    from edgepure.training.distributed import DISTRIBUTED_COMMANDS, refuse_distributed

    if ctx.invoked_subcommand not in DISTRIBUTED_COMMANDS:
        refuse_distributed(f"edgepure train {ctx.invoked_subcommand}")


@app.command("classifier")
@user_errors
def classifier(
    data: Annotated[str, typer.Option("--data", help="GTSRB folder/zip, CIFAR-10 folder/archive, or 'synth'.")],
    out: Annotated[Path, typer.Option("--out", help="Run folder: checkpoints (safetensors + JSON) go here.")],
    model: Annotated[str, typer.Option(help="Registered classifier architecture.")] = "signnet_s",
    epochs: Annotated[int, typer.Option(help="Number of epochs.")] = 20,
    batch_size: Annotated[int, typer.Option(help="Batch size: images per optimiser step (under torchrun the global "
                                                 "batch, shared by the processes).")] = 128,
    lr: Annotated[float, typer.Option(help="Peak learning rate (SGD, Nesterov, cosine after warm-up).")] = 0.05,
    weight_decay: Annotated[float, typer.Option(help="Weight decay of conv/linear weights.")] = 5e-4,
    seed: Annotated[int, typer.Option(min=0, help="Seed of initialisation, shuffling and augmentation.")] = 0,
    synth: Annotated[int, typer.Option(help="Synthetic renders mixed into every epoch (0: real data only).")] = 0,
    synth_pool: Annotated[int, typer.Option(help="Distinct synthetic renders the per-epoch draw comes from.")] = 8600,
    augment: Annotated[bool, typer.Option(help="Geometric, photometric, blur, occlusion and noise augmentation.")] = True,
    occlude: Annotated[float, typer.Option(help="Probability of an occluding patch per training image.")] = 0.25,
    occlude_max: Annotated[int, typer.Option(help="Largest occluding patch side in pixels.")] = 11,
    stickers: Annotated[float, typer.Option(help="Probability of 2-6 small, mostly white sticker patches per image.")] = 0.0,
    cutmix: Annotated[float, typer.Option(help="Probability that a batch is CutMixed: a box from another image "
                                               "of the batch, the loss split between the labels by area.")] = 0.0,
    ema: Annotated[float, typer.Option(help="EMA decay of the weights (0: off); the EMA is validated and saved as best.")] = 0.0,
    val_fraction: Annotated[float, typer.Option(help="Fraction of tracks held out for validation.")] = 0.1,
    resume: Annotated[bool, typer.Option(help="Continue from the run folder's last checkpoint.")] = False,
    max_steps: Annotated[int, typer.Option(help="Stop after this many optimiser steps (0: no limit).")] = 0,
    init: Annotated[Optional[str], typer.Option(help="Start from these weights: a shipped classifier's name or a checkpoint (fine-tuning).")] = None,
    denoise: Annotated[float, typer.Option(help="Share of images replaced by the prior's denoising D(x + σn; σ) (purifier-aware training).")] = 0.0,
    denoise_low: Annotated[float, typer.Option(help="Lowest σ of --denoise ([−1, 1] units).")] = 0.25,
    denoise_high: Annotated[float, typer.Option(help="Highest σ of --denoise.")] = 1.2,
    denoise_prior: Annotated[str, typer.Option(help="The prior (registered name) that --denoise uses.")] = "edm_unet_s",
    adversarial: Annotated[str, typer.Option(
        help="Adversarial training: a comma list of perturbation families (conv, patch, flow, additive, all) whose "
             "examples, crafted per batch against the model being trained at eval robust's budgets, it trains on "
             "besides the clean images; empty: off. (train prior's --adversarial takes a share of inputs instead.)")] = "",
    adv_steps: Annotated[int, typer.Option(help="PGD (or --adv-attack's) steps of the examples crafted on the fly, per batch.")] = 5,
    adv_strategy: Annotated[str, typer.Option(
        help="With several --adversarial families: 'random' attacks each image with one family drawn at random, "
             "'max' with every family, keeping the highest-loss example (one attack per family and image).")] = "random",
    adv_attack: Annotated[str, typer.Option(help="The attack that crafts them: pgd or apgd (APGD-CE).")] = "pgd",
    adv_weight: Annotated[Optional[float], typer.Option(
        help="w of the loss (1 − w)·CE(clean) + w·CE(adversarial), in [0, 1] (default 0.5; not with --trades).")] = None,
    trades: Annotated[float, typer.Option(
        help="β > 0: the TRADES loss CE(clean) + β·KL(p(clean) ‖ p(adversarial)) instead, the attack maximising "
             "the KL (0: off).")] = 0.0,
    device: DeviceOption = "cpu",
    as_json: Annotated[bool, typer.Option("--json", help="Print the final record as JSON.")] = False,
) -> None:
    """Train a classifier with validation on a held-out track split; resumable with --resume.

    With --adversarial it also trains on adversarial examples crafted per batch against it (docs/training.md).
    Under torchrun --nproc_per_node N the N processes train one model (PyTorch DDP; docs/training.md)."""
    from edgepure.models.loading import resolve_device
    from edgepure.training.classifier import TrainConfig, train_classifier
    from edgepure.training.distributed import ranks_from_env

    dev = resolve_device(device)
    cfg = TrainConfig(
        data=data, out=str(out), model=model, epochs=epochs, batch_size=batch_size, lr=lr, weight_decay=weight_decay,
        seed=seed, synth=synth, synth_pool=synth_pool, augment=augment, occlude=occlude, occlude_max=occlude_max,
        stickers=stickers, cutmix=cutmix, ema=ema, val_fraction=val_fraction, max_steps=max_steps or None, init=init,
        denoise=denoise, denoise_low=denoise_low, denoise_high=denoise_high, denoise_prior=denoise_prior,
        adversarial=adversarial, adv_steps=adv_steps, adv_strategy=adv_strategy, adv_attack=adv_attack,
        adv_weight=adv_weight, trades=trades,
    )
    record = train_classifier(cfg, resume=resume, log=lambda s: typer.echo(s, err=True), device=dev)
    if not ranks_from_env().main:
        return  # under torchrun rank 0 reports
    summary = {"out": str(out), "epochs_done": record["epoch"] + 1, "best_val_accuracy": record["best_val_accuracy"],
               "last": record["history"][-1]}
    if as_json:
        echo_json(summary)
    else:
        typer.echo(f"best validation accuracy {summary['best_val_accuracy']:.4f}; checkpoints in {out}")


@app.command("prior")
@user_errors
def prior(
    data: Annotated[str, typer.Option("--data", help="GTSRB folder/zip (the training split of the track split is used).")],
    out: Annotated[Path, typer.Option("--out", help="Run folder: checkpoints (safetensors + JSON) go here.")],
    model: Annotated[str, typer.Option(help="Registered prior architecture.")] = "edm_unet_s",
    epochs: Annotated[int, typer.Option(help="Number of epochs.")] = 12,
    batch_size: Annotated[int, typer.Option(help="Batch size.")] = 64,
    lr: Annotated[float, typer.Option(help="Peak learning rate (Adam, cosine after warm-up).")] = 1e-3,
    seed: Annotated[int, typer.Option(min=0, help="Seed of initialisation, shuffling, noise and augmentation.")] = 0,
    focus_low: Annotated[float, typer.Option(help="Lower end of the focus noise range (σ in [−1, 1] units).")] = 0.4,
    focus_high: Annotated[float, typer.Option(help="Upper end of the focus noise range.")] = 0.6,
    focus_p: Annotated[float, typer.Option(help="Share of samples drawn from the focus range (the rest: EDM log-normal).")] = 0.5,
    ema: Annotated[float, typer.Option(help="EMA decay of the weights (0: off); the EMA is validated and saved as best.")] = 0.999,
    val_fraction: Annotated[float, typer.Option(help="Fraction of tracks held out for validation.")] = 0.1,
    corrupt: Annotated[float, typer.Option(help="Share of inputs with an occluding patch or additive pattern under the noise, clean target (a restoration prior).")] = 0.0,
    corrupt_warp: Annotated[float, typer.Option(help="Share of inputs warped by a random smooth flow (0.3–3 px) under the noise, unwarped target (a prior for the distortion purifier).")] = 0.0,
    init: Annotated[Optional[str], typer.Option(help="Start from these weights: a registered prior's shipped ones or a checkpoint (fine-tuning).")] = None,
    adversarial: Annotated[float, typer.Option(help="A share in [0, 1]: that share of the inputs is replaced by PGD patch/additive examples against the classifier, clean target (train classifier's --adversarial takes families instead).")] = 0.0,
    adv_steps: Annotated[int, typer.Option(help="PGD steps of the examples found on the fly.")] = 4,
    adv_pool: Annotated[int, typer.Option(help="Attack this many training images once, before training, with eval robust's blind APGD-CE and take --adv-pool-share of the adversarial inputs from them (0: all PGD on the fly).")] = 0,
    adv_pool_share: Annotated[float, typer.Option(help="Share of the adversarial inputs taken from the pool.")] = 1.0,
    adv_pool_steps: Annotated[int, typer.Option(help="Attack steps of the pool's examples.")] = 20,
    adv_pool_method: Annotated[str, typer.Option(
        help="The pool's attack: apgd (APGD-CE, eval robust's), pgd, or a comma list of METHOD[:STEPS], e.g. "
             "apgd:20,pgd:40 (every pool image attacked by each; an input takes one at random).")] = "apgd",
    adv_pool_transfer: Annotated[str, typer.Option(
        help="Which iterate of the pool's attack is kept, as eval robust's --blind-transfer: loss (the highest-loss "
             "one after all steps) or first (the first that fooled the classifier: the shipped guided prior's "
             "pools).")] = "loss",
    adv_cache: Annotated[Optional[Path], typer.Option(help="Folder of the pool's examples, shared with eval robust --cache (default: --out).")] = None,
    adv_additive: Annotated[float, typer.Option(help="Share of those examples with additive noise (the rest: a patch).")] = 0.5,
    adv_sigma_max: Annotated[float, typer.Option(help="Their noise levels are log-uniform from 0.01 up to this (a purifier's jump uses small σ).")] = 1.0,
    feature_weight: Annotated[float, typer.Option(help="Weight of a classifier-feature loss on the denoised outputs at σ ≤ 0.5 (restorations the classifier reads).")] = 0.0,
    classifier: Annotated[Optional[str], typer.Option(help="Classifier they attack / whose features guide: a registered name or a checkpoint (default: the shipped one).")] = None,
    resume: Annotated[bool, typer.Option(help="Continue from the run folder's last checkpoint.")] = False,
    max_steps: Annotated[int, typer.Option(help="Stop after this many optimiser steps (0: no limit).")] = 0,
    device: DeviceOption = "cpu",
    as_json: Annotated[bool, typer.Option("--json", help="Print the final record as JSON.")] = False,
) -> None:
    """Train an image prior (EDM denoiser) for NAPPure and the diffusion purifiers; resumable with --resume."""
    from edgepure.models.loading import resolve_device
    from edgepure.training.prior import PriorConfig, train_prior

    dev = resolve_device(device)
    cfg = PriorConfig(data=data, out=str(out), model=model, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed,
                      focus=(focus_low, focus_high), focus_p=focus_p, ema=ema, val_fraction=val_fraction,
                      max_steps=max_steps or None, corrupt=corrupt, init=init, adversarial=adversarial,
                      corrupt_warp=corrupt_warp, adv_steps=adv_steps, classifier=classifier, feature_weight=feature_weight,
                      adv_additive=adv_additive, adv_sigma_max=adv_sigma_max, adv_pool=adv_pool,
                      adv_pool_share=adv_pool_share, adv_pool_steps=adv_pool_steps,
                      adv_pool_method=adv_pool_method, adv_pool_transfer=adv_pool_transfer,
                      adv_cache=str(adv_cache) if adv_cache is not None else None)
    record = train_prior(cfg, resume=resume, log=lambda s: typer.echo(s, err=True), device=dev)
    summary = {"out": str(out), "epochs_done": record["epoch"] + 1, "best_val_mse": record["best_val_mse"],
               "last": record["history"][-1]}
    if as_json:
        echo_json(summary)
    else:
        what = "mean of the denoising MSE at σ=0.5 and the restoration MSEs" if cfg.restoring else "MSE at σ=0.5"
        typer.echo(f"best validation {what}: {summary['best_val_mse']:.5f}; checkpoints in {out}")


@app.command("blindspot")
@user_errors
def blindspot(
    data: Annotated[str, typer.Option("--data", help="GTSRB folder/zip or 'synth' (the training split is used).")],
    out: Annotated[Path, typer.Option("--out", help="Run folder: checkpoints (safetensors + JSON) go here.")],
    model: Annotated[str, typer.Option(help="Registered blind-spot architecture.")] = "bsn_s",
    epochs: Annotated[int, typer.Option(help="Number of epochs.")] = 6,
    batch_size: Annotated[int, typer.Option(help="Batch size.")] = 64,
    lr: Annotated[float, typer.Option(help="Peak learning rate (Adam, cosine after warm-up).")] = 1e-3,
    seed: Annotated[int, typer.Option(min=0, help="Seed of initialisation, shuffling, noise and augmentation.")] = 0,
    noise_max: Annotated[float, typer.Option(help="Largest training noise std in [0, 1] units (zero-mean, symmetric).")] = 32 / 255,
    ema: Annotated[float, typer.Option(help="EMA decay of the weights (0: off); the EMA is validated and saved as best.")] = 0.999,
    val_fraction: Annotated[float, typer.Option(help="Fraction of tracks held out for validation.")] = 0.1,
    resume: Annotated[bool, typer.Option(help="Continue from the run folder's last checkpoint.")] = False,
    max_steps: Annotated[int, typer.Option(help="Stop after this many optimiser steps (0: no limit).")] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="Print the final record as JSON.")] = False,
) -> None:
    """Train a blind-spot network self-supervised on noisy training images (NCIS's restorer); resumable."""
    from edgepure.training.blindspot import BlindSpotConfig, train_blindspot

    cfg = BlindSpotConfig(data=data, out=str(out), model=model, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed,
                          noise_max=noise_max, ema=ema, val_fraction=val_fraction, max_steps=max_steps or None)
    record = train_blindspot(cfg, resume=resume, log=lambda s: typer.echo(s, err=True))
    summary = {"out": str(out), "epochs_done": record["epoch"] + 1, "best_val_mse": record["best_val_mse"],
               "last": record["history"][-1]}
    if as_json:
        echo_json(summary)
    else:
        typer.echo(f"best validation MSE at 16/255 noise: {summary['best_val_mse']:.5f}; checkpoints in {out}")


@app.command("impure")
@user_errors
def impure(
    data: Annotated[str, typer.Option("--data", help="GTSRB folder/zip or 'synth' (the training split is used).")],
    out: Annotated[Path, typer.Option("--out", help="Run folder: checkpoints (safetensors + JSON) go here.")],
    model: Annotated[str, typer.Option(help="Registered IMPure network.")] = "impure_s",
    classifier: Annotated[Optional[str], typer.Option(help="Feature network and attacked model (default: the shipped classifier).")] = None,
    epochs: Annotated[int, typer.Option(help="Number of epochs.")] = 4,
    batch_size: Annotated[int, typer.Option(help="Batch size (cut in five parts: clean + one per perturbation family).")] = 80,
    lr: Annotated[float, typer.Option(help="Peak learning rate (Adam, cosine after warm-up).")] = 2e-3,
    seed: Annotated[int, typer.Option(min=0, help="Seed of initialisation, shuffling, perturbations and noise.")] = 0,
    feature_weight: Annotated[float, typer.Option(help="Weight of the classifier-feature loss on mixed images.")] = 0.1,
    noise_t: Annotated[int, typer.Option(help="DDPM step of the noised copy shown in the hidden patches (IMPure: 400).")] = 400,
    ema: Annotated[float, typer.Option(help="EMA decay of the weights (0: off); the EMA is validated and saved as best.")] = 0.999,
    val_fraction: Annotated[float, typer.Option(help="Fraction of tracks held out for validation.")] = 0.1,
    val_n: Annotated[int, typer.Option(help="Held-out images scored after each epoch.")] = 500,
    resume: Annotated[bool, typer.Option(help="Continue from the run folder's last checkpoint.")] = False,
    max_steps: Annotated[int, typer.Option(help="Stop after this many optimiser steps (0: no limit).")] = 0,
    device: DeviceOption = "cpu",
    as_json: Annotated[bool, typer.Option("--json", help="Print the final record as JSON.")] = False,
) -> None:
    """Train IMPure's masked-reconstruction network on perturbed/clean pairs (pixel + feature loss); resumable."""
    from edgepure.models.loading import resolve_device
    from edgepure.training.impure import ImpureConfig, train_impure

    dev = resolve_device(device)
    cfg = ImpureConfig(data=data, out=str(out), model=model, classifier=classifier, epochs=epochs, batch_size=batch_size,
                       lr=lr, seed=seed, feature_weight=feature_weight, ema=ema, val_fraction=val_fraction, val_n=val_n,
                       max_steps=max_steps or None, model_kwargs={"noise_t": noise_t})
    record = train_impure(cfg, resume=resume, log=lambda s: typer.echo(s, err=True), device=dev)
    summary = {"out": str(out), "epochs_done": record["epoch"] + 1, "best_val_accuracy": record["best_val_accuracy"],
               "last": record["history"][-1]}
    if as_json:
        echo_json(summary)
    else:
        typer.echo(f"best validation accuracy on purified perturbed images: {summary['best_val_accuracy']:.4f}; "
                   f"checkpoints in {out}")


@app.command("nappure")
@user_errors
def nappure(
    data: Annotated[str, typer.Option("--data", help="GTSRB folder/zip (images of the training tracks are used).")],
    out: Annotated[Path, typer.Option("--out", help="Run folder: state.json (resumable), settings.json, adversarial examples.")],
    kind: Annotated[str, typer.Option(help="NAPPure kind: blur, occlusion, distortion, additive or joint.")] = "joint",
    steps: Annotated[int, typer.Option(help="K, the number of unrolled steps the settings are learned for.")] = 8,
    n: Annotated[int, typer.Option(help="Training-track images, each attacked by every attack.")] = 256,
    attack: Annotated[Optional[list[str]], typer.Option(help="Attack(s) the examples come from (repeatable; default: conv, patch, flow, additive).")] = None,
    attack_steps: Annotated[int, typer.Option(help="APGD-CE steps of the blind attacks.")] = 100,
    iters: Annotated[int, typer.Option(help="Learning iterations.")] = 60,
    batch_size: Annotated[int, typer.Option(help="Images per source (clean and each attack) per iteration.")] = 8,
    lr: Annotated[float, typer.Option(help="Adam's learning rate on the logarithms of the hyper-parameters.")] = 0.05,
    max_scale: Annotated[float, typer.Option(help="Each learned value stays within this factor of its start.")] = 4.0,
    seed: Annotated[int, typer.Option(min=0, help="Seed of the image draw, the attacks, the batches and the noise.")] = 0,
    classifier: Annotated[Optional[str], typer.Option(help="Classifier name or checkpoint (default: the shipped one).")] = None,
    cache: Annotated[Optional[Path], typer.Option(help="Folder of the blind adversarial examples, shared between runs and with eval robust --cache (default: --out).")] = None,
    snapshot_every: Annotated[int, typer.Option(help="Keep the settings of every N-th iteration (settings-NNNN.json; 0: off).")] = 5,
    prior: Annotated[Optional[str], typer.Option(help="The purifier's prior, a name or checkpoint (default: the kind's default prior).")] = None,
    resume: Annotated[bool, typer.Option(help="Continue the run in --out.")] = False,
    device: DeviceOption = "cpu",
    as_json: Annotated[bool, typer.Option("--json", help="Print the learned settings as JSON.")] = False,
) -> None:
    """Learn NAPPure's per-step step sizes, λ1, λ2 and σ₀ for one kind and K through its unrolled steps.

    Use the result with ``--defense-arg tuned=OUT/settings.json`` (eval), ``--purifier-arg tuned=…`` (export)."""
    from edgepure.models.loading import resolve_device
    from edgepure.perturb import PERTURBATIONS
    from edgepure.runtime.errors import ConfigError
    from edgepure.training.nappure import NAPPureTuneConfig, tune_nappure

    dev = resolve_device(device)
    attacks = tuple(attack or ("conv", "patch", "flow", "additive"))
    bad = [a for a in attacks if a not in PERTURBATIONS]
    if bad:
        raise ConfigError(f"unknown attack(s) {', '.join(bad)} (expected {', '.join(PERTURBATIONS)})")
    cfg = NAPPureTuneConfig(data=data, out=str(out), kind=kind, steps=steps, n=n, attacks=attacks,
                            attack_steps=attack_steps, iters=iters, batch_size=batch_size, lr=lr, max_scale=max_scale,
                            seed=seed, classifier=classifier, cache=str(cache) if cache else None,
                            snapshot_every=snapshot_every, prior=prior)
    result = tune_nappure(cfg, resume=resume, log=lambda s: typer.echo(s, err=True), device=dev)
    if as_json:
        echo_json(result)
    else:
        typer.echo(f"learned settings after {result['iter']} iterations: {out / 'settings.json'}")

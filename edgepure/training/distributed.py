"""Training on several processes with PyTorch DistributedDataParallel (DDP), launched by ``torchrun``.

``torchrun --nproc_per_node N --no-python edgepure train classifier …`` starts N copies of the command, each with
``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` (and the rendezvous' ``MASTER_ADDR``/``MASTER_PORT``) in its
environment. :func:`session` reads them, joins the process group (NCCL for ``--device cuda``, each process on
``cuda:LOCAL_RANK``; Gloo on the CPU) and leaves it afterwards. Without them, or with ``WORLD_SIZE`` 1, nothing is
initialised and the trainer runs exactly as a plain process does.

The rules the trainers follow (the single process is the case N = 1 of each):

- ``--batch-size`` is the *global* batch: the epoch's permutation is drawn from the shared seeded generator, so it
  is the same on every rank, and rank r trains on images ``r, r + N, r + 2N, …`` of each global batch
  (:func:`shard`: together the N shards are the batch a single process would train on). The steps per epoch and the
  learning-rate schedule therefore do not depend on N (:func:`steps_per_epoch`), and DDP's gradient average over
  the ranks, with each rank's loss weighted by its share (:func:`shard_weight`), is the gradient of the global
  batch's mean loss.
- Draws that must agree (initialisation, the permutation) come from the shared seeds; draws that must differ
  (augmentation, CutMix, dropout, the adversarial examples' families and random starts) from a seed per rank
  (:func:`rank_seed`, :func:`rank_generator`).
- Rank 0 alone writes checkpoints, logs and progress bars (:func:`main_only`); epoch metrics are summed over the
  ranks (:func:`all_sum`).
- BatchNorm: on CUDA the model's BatchNorm layers become ``SyncBatchNorm`` (statistics over the global batch, as a
  single process computes them). ``SyncBatchNorm`` runs on CUDA only, so on the CPU each rank normalises with its
  own shard's statistics, DDP's usual behaviour; after every epoch the buffers (running statistics) are copied from
  rank 0 (:func:`sync_buffers`), so every rank validates, and rank 0 saves, the same model.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Mapping

import torch
from torch import nn

from edgepure.runtime.errors import ConfigError

__all__ = ["DISTRIBUTED_COMMANDS", "Ranks", "all_sum", "main_only", "rank_generator", "rank_seed", "ranks_from_env",
           "refuse_distributed", "session", "shard", "shard_weight", "steps_per_epoch", "sync_buffers", "wrap"]

_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
# the ``edgepure train`` commands that train on several processes under torchrun
DISTRIBUTED_COMMANDS = ("classifier",)


@dataclass(frozen=True)
class Ranks:
    """This process's place among the training processes; the default is a single process."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """Whether this process writes (checkpoints, logs, progress bars)."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def _env_int(env: Mapping[str, str], name: str) -> int:
    raw = env.get(name)
    try:
        return int(raw)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ConfigError(f"{name}={raw!r} in the environment: expected a whole number, as torchrun sets it") from None


def ranks_from_env(env: Mapping[str, str] | None = None) -> Ranks:
    """The :class:`Ranks` torchrun's variables describe; a single process without them or with ``WORLD_SIZE`` 1."""
    env = os.environ if env is None else env
    if "WORLD_SIZE" not in env or _env_int(env, "WORLD_SIZE") == 1:
        return Ranks()
    missing = [k for k in _ENV if k not in env]
    if missing:
        raise ConfigError(f"WORLD_SIZE={env['WORLD_SIZE']} is set but {', '.join(missing)} "
                          f"{'is' if len(missing) == 1 else 'are'} not: start distributed training with "
                          "torchrun --nproc_per_node N, which sets all of them")
    ranks = Ranks(_env_int(env, "RANK"), _env_int(env, "WORLD_SIZE"), _env_int(env, "LOCAL_RANK"))
    if ranks.world_size < 1 or not 0 <= ranks.rank < ranks.world_size or ranks.local_rank < 0:
        raise ConfigError(f"RANK={ranks.rank}, LOCAL_RANK={ranks.local_rank}, WORLD_SIZE={ranks.world_size}: "
                          "expected 0 ≤ RANK < WORLD_SIZE and LOCAL_RANK ≥ 0")
    return ranks


def refuse_distributed(command: str, env: Mapping[str, str] | None = None) -> None:
    """A :class:`ConfigError` when ``command``, which trains in one process, is started by torchrun with N > 1: the
    N copies would each train the whole model and write the same files."""
    ranks = ranks_from_env(env)
    if ranks.distributed:
        raise ConfigError(f"{command} trains in one process, and torchrun started {ranks.world_size} (WORLD_SIZE="
                          f"{ranks.world_size}): only `edgepure train classifier` trains on several processes; "
                          "start this command without torchrun")


def _rank_device(device: torch.device, ranks: Ranks) -> torch.device:
    """``--device cuda`` under torchrun is ``cuda:LOCAL_RANK``: one GPU per process."""
    if device.type != "cuda":
        return device
    if device.index is not None and device.index != ranks.local_rank:
        raise ConfigError(f"--device {device}: under torchrun each process uses cuda:LOCAL_RANK (this one "
                          f"cuda:{ranks.local_rank}); give --device cuda")
    count = torch.cuda.device_count()
    if ranks.local_rank >= count:
        raise ConfigError(f"LOCAL_RANK={ranks.local_rank}, but PyTorch sees {count} CUDA device(s): start at most "
                          f"{count} processes per machine (torchrun --nproc_per_node)")
    return torch.device("cuda", ranks.local_rank)


@contextlib.contextmanager
def session(device: str | torch.device = "cpu") -> Iterator[tuple[Ranks, torch.device]]:
    """``(ranks, device)`` of this process; under torchrun inside the initialised process group (NCCL on CUDA, Gloo
    on the CPU), left again on exit. A process group the caller has initialised is used and left to the caller."""
    import torch.distributed as dist

    device = torch.device(device)
    if dist.is_available() and dist.is_initialized():
        ranks = Ranks(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))
        yield ranks, _rank_device(device, ranks) if ranks.distributed else device
        return
    ranks = ranks_from_env()
    if not ranks.distributed:
        yield ranks, device
        return
    device = _rank_device(device, ranks)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    try:
        yield ranks, device
    finally:
        dist.destroy_process_group()


def wrap(model: nn.Module, ranks: Ranks, device: torch.device) -> tuple[nn.Module, nn.Module]:
    """``(model, net)``: the module (its BatchNorm synchronised when distributed on CUDA) moved to ``device``, and
    what the training forward pass goes through: :func:`~edgepure.models.loading.on_device` of it alone, of a
    ``DistributedDataParallel`` over it under torchrun. Checkpoints, the EMA, attacks and validation use ``model``."""
    from torch.nn.parallel import DistributedDataParallel

    from edgepure.models.loading import on_device

    if not ranks.distributed:
        return model, on_device(model, device)
    if device.type == "cuda":
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model = model.to(device)
    ddp = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    return model, on_device(ddp, device)


def rank_seed(seed: int, ranks: Ranks) -> int:
    """The seed of this rank's own draws: ``seed`` itself for a single process."""
    return seed if not ranks.distributed else (seed * 1_000_003 + ranks.rank + 1) % 2**63


def rank_generator(shared: torch.Generator, seed: int, ranks: Ranks) -> torch.Generator:
    """The generator of this rank's own draws: the ``shared`` one (seeded with ``seed``) for a single process,
    else a fresh one seeded by :func:`rank_seed`."""
    return shared if not ranks.distributed else torch.Generator().manual_seed(rank_seed(seed, ranks))


def steps_per_epoch(n: int, batch_size: int, ranks: Ranks) -> int:
    """Global batches of ``batch_size`` per epoch of ``n`` images; a last partial batch counts when it has an image
    for every rank (always, for a single process), else its images sit this epoch out."""
    if batch_size < ranks.world_size:
        raise ConfigError(f"--batch-size {batch_size} is the global batch, shared by the {ranks.world_size} "
                          f"processes: give at least {ranks.world_size}")
    return n // batch_size + (1 if n % batch_size >= ranks.world_size else 0)


def shard(batch: torch.Tensor, ranks: Ranks) -> torch.Tensor:
    """This rank's share of a global batch of indices: every ``world_size``-th one from position ``rank``."""
    return batch if not ranks.distributed else batch[ranks.rank :: ranks.world_size]


def shard_weight(n_local: int, n_global: int, ranks: Ranks) -> float:
    """The factor on this rank's mean loss over its ``n_local`` images that makes DDP's gradient average over the
    ranks the gradient of the mean loss over the ``n_global`` images of the global batch."""
    return ranks.world_size * n_local / n_global


def all_sum(values: list[float], ranks: Ranks, device: torch.device) -> list[float]:
    """``values`` summed over the ranks (as they are for a single process)."""
    if not ranks.distributed:
        return list(values)
    import torch.distributed as dist

    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


@torch.no_grad()
def sync_buffers(modules: list[nn.Module | None], ranks: Ranks) -> None:
    """Copy rank 0's buffers (BatchNorm's running statistics) into every rank's ``modules``."""
    if not ranks.distributed:
        return
    import torch.distributed as dist

    for module in modules:
        for b in module.buffers() if module is not None else ():
            dist.broadcast(b, src=0)


def _silent(*args: Any, **kwargs: Any) -> None:
    return None


def main_only(log: Callable[..., Any], ranks: Ranks) -> Callable[..., Any]:
    """``log`` on rank 0, a function that prints nothing on the others."""
    return log if ranks.main else _silent

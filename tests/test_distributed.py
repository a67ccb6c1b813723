"""Training on several processes (``torchrun``, PyTorch DDP): two CPU processes with Gloo train one model."""

import json
import os
import socket
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import conftest
from edgepure.runtime.errors import ConfigError
from edgepure.training import classifier as clf
from edgepure.training import distributed
from edgepure.training.distributed import Ranks

TIMEOUT_S = 120  # a bound on a hung rendezvous, far above the seconds the runs take


def _tiny_net() -> nn.Module:
    """No BatchNorm and no dropout: nothing in it depends on how a batch is split, so two ranks must reproduce a
    single process exactly (to float rounding)."""
    return nn.Sequential(nn.Conv2d(3, 8, 3, stride=2), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(8, 43))


_REAL_CREATE = clf.create_classifier


def _create(name: str, **kw: Any) -> nn.Module:
    return _tiny_net() if name == "tiny" else _REAL_CREATE(name, **kw)


# the exact comparison: no random draw per rank (no augmentation, CutMix or dropout); 36 training images in global
# batches of 11 are shards of 6 + 5 images, the last batch of 3 one of 2 + 1 (the loss weighting matters)
EXACT = dict(model="tiny", epochs=2, batch_size=11, val_fraction=0.25, lr=0.1, augment=False)
# the shipped kind of network: BatchNorm (per rank on the CPU), augmentation and an EMA
WITH_BN = dict(model="signnet_xs", epochs=1, batch_size=8, val_fraction=0.25, lr=0.05, ema=0.9)


def _worker(rank: int, world: int, ports: list[int], data: str, root: str) -> None:
    """One rank: the environment torchrun would set, then the runs the test compares; every rank writes what it
    holds into ``root/rank{rank}.*`` (the test's own files, not the trainer's)."""
    from safetensors.torch import save_file

    torch.set_num_threads(1)
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1")
    created: list[nn.Module] = []
    saves: list[str] = []
    images: list[int] = []  # per training step, the images this rank trained on
    real_save, real_batch_loss = clf.save_checkpoint, clf._batch_loss

    def create(name: str, **kw: Any) -> nn.Module:
        created.append(_create(name, **kw))
        return created[-1]

    def save(directory: Path, tag: str, *args: Any) -> None:
        saves.append(f"{Path(directory).name}/{tag}")
        real_save(directory, tag, *args)

    def batch_loss(net: nn.Module, x: torch.Tensor, *args: Any) -> Any:
        images.append(len(x))
        return real_batch_loss(net, x, *args)

    clf.create_classifier, clf.save_checkpoint, clf._batch_loss = create, save, batch_loss
    logs: list[str] = []
    runs = [("exact", EXACT, {}, False), ("cut", EXACT, {"max_steps": 4}, False), ("cut", EXACT, {}, True),
            ("bn", WITH_BN, {}, False)]
    histories, shares = {}, {}
    for (name, kw, extra, resume), port in zip(runs, ports):
        images.clear()
        os.environ["MASTER_PORT"] = str(port)
        cfg = clf.TrainConfig(data=data, out=f"{root}/{name}", **{**kw, **extra})  # type: ignore[arg-type]
        histories[name] = clf.train_classifier(cfg, resume=resume, log=logs.append)["history"]
        shares[name] = list(images)
        state = {k: v.detach().clone().contiguous() for k, v in created[-1].state_dict().items()}
        save_file(state, f"{root}/rank{rank}.{name}.safetensors")
    Path(f"{root}/rank{rank}.json").write_text(json.dumps({"saves": saves, "logs": logs, "histories": histories,
                                                           "shares": shares}))


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _spawn(world: int, data: Path, root: Path) -> None:
    import torch.multiprocessing as mp

    ctx = mp.start_processes(_worker, args=(world, _free_ports(4), str(data), str(root)), nprocs=world, join=False,
                             start_method="spawn")
    deadline = time.monotonic() + TIMEOUT_S
    try:
        while not ctx.join(timeout=1):
            if time.monotonic() > deadline:
                pytest.fail(f"the {world} training processes did not finish within {TIMEOUT_S} s")
    finally:
        for p in ctx.processes:
            if p.is_alive():
                p.kill()


def _load(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], atol: float = 0.0) -> bool:
    return a.keys() == b.keys() and all(torch.allclose(a[k].double(), b[k].double(), rtol=0, atol=atol) for k in a)


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """``(data, root)`` after two Gloo ranks ran the exact, the interrupted-and-resumed and the BatchNorm runs."""
    tmp = tmp_path_factory.mktemp("ddp")
    data = conftest.make_gtsrb(tmp / "data")
    root = tmp / "runs"
    root.mkdir()
    _spawn(2, data, root)
    return data, root


def test_two_ranks_hold_the_same_weights(two_ranks: tuple[Path, Path]) -> None:
    _, root = two_ranks
    for name in ("exact", "bn"):  # bn: the running statistics too, which each rank updates with its own shard
        w0, w1 = _load(root / f"rank0.{name}.safetensors"), _load(root / f"rank1.{name}.safetensors")
        assert _same(w0, w1), name
        assert _same(w0, _load(root / name / "last.safetensors")), name  # what rank 0 saved is what both hold


def test_two_ranks_train_what_one_process_trains_on_the_same_global_batches(
        two_ranks: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data, root = two_ranks
    # each step each rank trains on its shard of the global batch of 11: 6 + 5 images, the last batch of 3 2 + 1
    shares = [json.loads((root / f"rank{r}.json").read_text())["shares"]["exact"] for r in (0, 1)]
    assert shares == [[6, 6, 6, 2] * 2, [5, 5, 5, 1] * 2]
    monkeypatch.setattr(clf, "create_classifier", _create)
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    cfg = clf.TrainConfig(data=str(data), out=str(tmp_path / "one"), **EXACT)  # type: ignore[arg-type]
    single = clf.train_classifier(cfg, log=lambda s: None)
    two = json.loads((root / "rank0.json").read_text())["histories"]["exact"]
    assert [h["train_loss"] for h in two] == pytest.approx([h["train_loss"] for h in single["history"]], rel=1e-5)
    assert [h["val_accuracy"] for h in two] == [h["val_accuracy"] for h in single["history"]]
    assert _same(_load(root / "rank0.exact.safetensors"), _load(tmp_path / "one" / "last.safetensors"), atol=1e-5)


def test_an_interrupted_two_rank_run_resumes_where_it_stopped(two_ranks: tuple[Path, Path]) -> None:
    _, root = two_ranks
    assert _same(_load(root / "cut" / "last.safetensors"), _load(root / "exact" / "last.safetensors"), atol=1e-6)
    logs = json.loads((root / "rank0.json").read_text())["logs"]
    assert any(s.startswith("resuming from epoch 1 of 2") for s in logs)


def test_only_rank_0_writes_checkpoints_and_logs(two_ranks: tuple[Path, Path]) -> None:
    _, root = two_ranks
    rank0, rank1 = (json.loads((root / f"rank{r}.json").read_text()) for r in (0, 1))
    assert rank1["saves"] == [] and rank1["logs"] == []
    assert "bn/last" in rank0["saves"] and "bn/last_ema" in rank0["saves"] and rank0["logs"]
    record = json.loads((root / "bn" / "last.json").read_text())
    assert record["world_size"] == 2 and record["config"]["batch_size"] == 8  # the global batch
    # both ranks report the metrics summed over the two shards (and their own clock)
    untimed = [{n: [{k: v for k, v in e.items() if k != "seconds"} for e in h] for n, h in r["histories"].items()}
               for r in (rank0, rank1)]
    assert untimed[0] == untimed[1]


def test_the_shards_of_a_global_batch_are_the_batch() -> None:
    batch = torch.arange(11) * 3
    shards = [distributed.shard(batch, Ranks(r, 3)) for r in range(3)]
    assert sorted(torch.cat(shards).tolist()) == batch.tolist()
    assert [len(s) for s in shards] == [4, 4, 3]
    assert distributed.shard(batch, Ranks()) is batch
    # DDP averages over the ranks; with each rank's mean weighted so, the average is the global batch's mean
    losses = batch.double()
    weighted = [distributed.shard_weight(len(sh), 11, Ranks(r, 3)) * losses[r::3].mean() for r, sh in enumerate(shards)]
    assert float(sum(weighted) / 3) == pytest.approx(float(losses.mean()))


def test_steps_per_epoch_do_not_depend_on_the_number_of_ranks_except_for_a_last_tiny_batch() -> None:
    assert distributed.steps_per_epoch(36, 11, Ranks()) == 4 == distributed.steps_per_epoch(36, 11, Ranks(0, 3))
    assert distributed.steps_per_epoch(36, 7, Ranks()) == 6  # the last batch of 1 image trains alone
    assert distributed.steps_per_epoch(36, 7, Ranks(1, 2)) == 5  # … but has no image for the second rank
    with pytest.raises(ConfigError, match="global batch.*at least 4"):
        distributed.steps_per_epoch(36, 3, Ranks(0, 4))


def test_ranks_draw_their_own_augmentation_and_share_the_single_process_stream_when_alone() -> None:
    shared = torch.Generator().manual_seed(5)
    assert distributed.rank_generator(shared, 5, Ranks()) is shared
    firsts = [torch.rand(4, generator=distributed.rank_generator(shared, 5, Ranks(r, 2))) for r in range(2)]
    again = torch.rand(4, generator=distributed.rank_generator(shared, 5, Ranks(0, 2)))
    assert not torch.equal(firsts[0], firsts[1]) and torch.equal(firsts[0], again)
    assert distributed.rank_seed(5, Ranks()) == 5


def test_the_environment_torchrun_sets_selects_the_ranks() -> None:
    full = dict(RANK="1", WORLD_SIZE="2", LOCAL_RANK="1", MASTER_ADDR="127.0.0.1", MASTER_PORT="29500")
    assert distributed.ranks_from_env({}) == Ranks()
    assert distributed.ranks_from_env({**full, "WORLD_SIZE": "1", "RANK": "0"}) == Ranks()  # --nproc_per_node 1
    assert distributed.ranks_from_env(full) == Ranks(1, 2, 1)
    with pytest.raises(ConfigError, match="LOCAL_RANK is not"):
        distributed.ranks_from_env({k: v for k, v in full.items() if k != "LOCAL_RANK"})
    with pytest.raises(ConfigError, match="RANK='x'"):
        distributed.ranks_from_env({**full, "RANK": "x"})
    with pytest.raises(ConfigError, match="0 ≤ RANK < WORLD_SIZE"):
        distributed.ranks_from_env({**full, "RANK": "2"})


def test_a_single_process_uses_no_process_group(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch.distributed as dist

    monkeypatch.setenv("WORLD_SIZE", "1")
    with distributed.session("cpu") as (ranks, device):
        assert ranks == Ranks() and device == torch.device("cpu") and not dist.is_initialized()


def test_training_commands_without_ddp_refuse_to_run_under_torchrun(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from edgepure.cli.main import app

    for key, value in dict(RANK="1", WORLD_SIZE="2", LOCAL_RANK="1", MASTER_ADDR="127.0.0.1", MASTER_PORT="1").items():
        monkeypatch.setenv(key, value)
    for command in ("prior", "blindspot", "impure", "nappure"):
        result = CliRunner().invoke(app, ["train", command, "--data", "synth", "--out", str(tmp_path / command)])
        assert result.exit_code == 1, (command, result.output)
        assert "only `edgepure train classifier` trains on several processes" in result.output, result.output
        assert not (tmp_path / command).exists()


def test_each_process_takes_the_gpu_of_its_local_rank() -> None:
    with pytest.raises(ConfigError, match="cuda:LOCAL_RANK.*give --device cuda"):
        distributed._rank_device(torch.device("cuda", 1), Ranks(0, 2, 0))
    assert distributed._rank_device(torch.device("cpu"), Ranks(1, 2, 1)) == torch.device("cpu")

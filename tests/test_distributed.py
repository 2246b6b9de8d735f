"""Multi-process pretraining on the CPU (gloo, 2 processes): queues identical on every rank,
parameters in sync, and the loss of a single process computing the same global batch in
the same per-rank shards (BatchNorm statistics are per shard under DDP)."""
import os
import socket
import subprocess
import sys

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from conftest import SMALL_QUEUE, write_synthetic_dataset

from scdfast.config import SCDConfig
from scdfast.losses import scd_loss
from scdfast.models import SCDNet
from scdfast.train.distributed import Distributed
from scdfast.train.run_log import STEP_FIELDS
from scdfast.train.step import PretrainStep

WORLD, BATCH, STEPS = 2, 8, 3
CONFIG = SCDConfig.tiny(queue_size=32, dropout=0.0)  # no dropout: ranks draw different masks


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _views(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(100 + step)
    return (torch.randn(BATCH, 3, CONFIG.window, 25, 2, generator=g),
            torch.randn(BATCH, 3, CONFIG.window, 25, 2, generator=g))


def _new_model():
    torch.manual_seed(0)
    model = SCDNet(CONFIG)
    optimizer = torch.optim.SGD(model.query_encoder.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)
    return model, optimizer


def _worker(rank: int, port: int, out: str, bn: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(WORLD), RANK=str(rank),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    distributed = Distributed.from_env("cpu")
    model, optimizer = _new_model()
    step = PretrainStep(model, optimizer, torch.device("cpu"), compile_mode="off", precision="fp32",
                        distributed=distributed, bn_mode=bn)
    lo, hi = distributed.shard(BATCH)
    losses = []
    for s in range(STEPS):
        q, k = _views(s)
        losses.append(distributed.mean(step(q[lo:hi], k[lo:hi])).item())
    checks = {
        "queues_equal": all(distributed.all_equal(q) for q in model.queues),
        "pointers_equal": distributed.all_equal(model.banks["instance"].ptr),
        "params_equal": all(distributed.all_equal(p.detach()) for p in model.query_encoder.parameters()),
        "key_params_equal": all(distributed.all_equal(p) for p in model.key_encoder.parameters()),
    }
    if rank == 0:
        torch.save({"losses": losses, "checks": checks, "model": model.state_dict()}, out)
    dist.barrier()  # neither rank tears gloo down while the other still talks to it (as test_distributed_losses)
    dist.destroy_process_group()


def _single_process_in_shards():
    """The same global batches in one process, each shard through the encoders on its own, on
    one thread as each rank: with two, the CPU kernels' float32 sums run in another order, and
    3 steps amplify that to 3e-3 in some weights (measured on an AMD EPYC)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _steps_in_shards()
    finally:
        torch.set_num_threads(threads)


def _steps_in_shards():
    model, optimizer = _new_model()
    model.train()
    losses = []
    per = BATCH // WORLD
    for s in range(STEPS):
        q, k = _views(s)
        model.momentum_update()
        keys = [model.encode_keys(k[r * per:(r + 1) * per]) for r in range(WORLD)]
        shard_losses = [scd_loss(model.encode_queries(q[r * per:(r + 1) * per]), keys[r], model.queues, 0.2)
                        for r in range(WORLD)]
        loss = sum(shard_losses) / WORLD  # DDP averages the ranks' gradients
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        model.enqueue(tuple(torch.cat([kk[i] for kk in keys]) for i in range(3)))
        losses.append(loss.item())
    return losses, model.state_dict()


def _run(tmp_path, bn):
    out = str(tmp_path / f"rank0-{bn}.pt")
    mp.spawn(_worker, args=(_free_port(), out, bn), nprocs=WORLD, join=True)
    return torch.load(out, weights_only=False)


def test_ddp_equals_single_process_on_the_same_shards(tmp_path):
    result = _run(tmp_path, "local")
    assert all(result["checks"].values()), result["checks"]
    want_losses, want_state = _single_process_in_shards()
    torch.testing.assert_close(torch.tensor(result["losses"]), torch.tensor(want_losses), rtol=1e-5, atol=1e-5)
    for name, value in want_state.items():
        if name.rsplit(".", 1)[-1] in ("running_mean", "running_var", "num_batches_tracked"):
            continue  # BatchNorm's running statistics: rank 0 tracks its own shard (unused in training)
        if value.is_floating_point():
            torch.testing.assert_close(result["model"][name], value, rtol=1e-4, atol=1e-5, msg=name)
        else:
            assert torch.equal(result["model"][name], value), name


def test_shuffle_bn_keeps_ranks_in_sync(tmp_path):
    result = _run(tmp_path, "shuffle")
    assert all(result["checks"].values()), result["checks"]
    assert all(torch.isfinite(torch.tensor(result["losses"])))


def test_torchrun_pretrain_end_to_end(tmp_path):
    """`torchrun --nproc_per_node 2 -m scdfast pretrain ...` as the README shows it."""
    data = tmp_path / "data"
    data.mkdir()
    write_synthetic_dataset(data, samples=32, max_frames=100, num_frames_file=False)
    run = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # --log-dir: torchrun's logs go with the test's files, not into a new temporary folder left behind
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                             "--master_port", str(_free_port()), "--log-dir", str(tmp_path / "torchrun"),
                             "-m", "scdfast", "pretrain", "--preset", "tiny",
                             "--data", str(data), "--epochs", "1", "--batch-size", "8", "--device", "cpu",
                             "--run-dir", str(run), "--no-progress", *SMALL_QUEUE],
                            capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    state = torch.load(run / "checkpoints" / "last.pt", weights_only=False)
    assert state["step"] == 4
    rows = (run / "steps.csv").read_text().splitlines()
    assert rows[0] == ",".join(STEP_FIELDS) and len(rows) >= 2  # one writer: rank 0

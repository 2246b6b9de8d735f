"""Distributed negatives on the CPU (gloo, 2 processes): each rank's rows against every rank's
columns, and the loss and every gradient equal to one process holding the global batch.

Each rank's loss is the mean over its own rows, so the global loss is the ranks' mean; the
gather's backward sums every rank's gradient, so a rank's gradient divided by the world size
(DDP's averaging) is the global loss's gradient of that rank's rows. The temperature is not
gathered: the ranks' mean of its gradient is the global one.
"""
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from scdfast.losses import clip_loss, nt_xent

WORLD, N, D = 2, 5, 16
BACKENDS = ["torch", "triton"]


def _cases():
    """name -> loss(a, b, temperature, backend, distributed) over the global batch or a rank's shard."""
    labels = torch.tensor([0, 1, 2, 0, 1, 3, 2, 2, 4, 0])  # global, N per rank

    def shard(x, rank, distributed):
        return x[rank * N:(rank + 1) * N] if distributed else x

    return {
        "nt_xent": lambda a, b, t, backend, rank, distributed: nt_xent(
            a, b, t, backend, normalize=True, precision="ieee", gather_distributed=distributed),
        "supcon": lambda a, b, t, backend, rank, distributed: nt_xent(
            a, b, t, backend, normalize=True, precision="ieee", labels=shard(labels, rank, distributed),
            gather_distributed=distributed),
        "clip_local": lambda a, b, t, backend, rank, distributed: clip_loss(
            a, b, backend=backend, precision="ieee", logit_scale=1 / t, gather_with_grad=distributed,
            local_loss=distributed),
        "clip_global": lambda a, b, t, backend, rank, distributed: clip_loss(
            a, b, backend=backend, precision="ieee", logit_scale=1 / t, labels=shard(labels, rank, distributed),
            gather_with_grad=distributed),
    }


def _global_batch():
    g = torch.Generator().manual_seed(7)
    return torch.randn(WORLD * N, D, generator=g), torch.randn(WORLD * N, D, generator=g)


def _loss_and_grads(fn, a, b, backend, rank, distributed):
    a, b = a.clone().requires_grad_(), b.clone().requires_grad_()
    t = torch.tensor(0.3, requires_grad=True)
    loss = fn(a, b, t, backend, rank, distributed)
    loss.backward()
    return {"loss": loss.detach(), "a": a.grad, "b": b.grad, "t": t.grad}


def _worker(rank: int, out: str) -> None:
    torch.set_num_threads(1)
    # a file rendezvous: no port to race another process for between choosing it and binding it
    dist.init_process_group("gloo", init_method=f"file://{out}.store", rank=rank, world_size=WORLD)
    a, b = _global_batch()
    results = {}
    for name, fn in _cases().items():
        for backend in BACKENDS:
            shard = slice(rank * N, (rank + 1) * N)
            results[name, backend] = _loss_and_grads(fn, a[shard], b[shard], backend, rank, True)
    torch.save(results, f"{out}.{rank}")
    dist.barrier()  # neither rank tears gloo down while the other still talks to it
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("ranks") / "results")
    mp.spawn(_worker, args=(out,), nprocs=WORLD, join=True)
    return [torch.load(f"{out}.{rank}") for rank in range(WORLD)]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", sorted(_cases()))
def test_every_ranks_negatives_equal_one_process_with_the_global_batch(case, backend, ranks):
    a, b = _global_batch()
    want = _loss_and_grads(_cases()[case], a, b, backend, 0, False)
    got = [r[case, backend] for r in ranks]
    tol = dict(rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(sum(r["loss"] for r in got) / WORLD, want["loss"], **tol)
    for x in ("a", "b"):
        torch.testing.assert_close(torch.cat([r[x] for r in got]) / WORLD, want[x], **tol, msg=x)
    torch.testing.assert_close(sum(r["t"] for r in got) / WORLD, want["t"], **tol)

"""Steps that never wait for the host, checked without data: the paper-size pretraining step and
each protocol's training step run on the meta device, where tensors have shapes and no values.
A host read (`.item()`, `.tolist()`, `bool(tensor)`) raises there, and so does an operation on a
tensor left on another device. Each test prints how many operators its step dispatches (the
eager step's operator count, compared before and after a change in benchmarks/RESULTS.md)."""
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from scdfast.config import PretrainConfig, SCDConfig
from scdfast.evaluation.classifier_step import classification_step
from scdfast.models import DownstreamEncoder, SCDNet
from scdfast.train.step import PretrainStep
from scdfast.train.trainer import query_optimizer

META = torch.device("meta")


class OperatorCount(TorchDispatchMode):
    """Counts the ATen operators dispatched inside it."""

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += 1
        return func(*args, **(kwargs or {}))


def _all_on_meta(module: torch.nn.Module) -> None:
    elsewhere = [name for name, t in [*module.named_parameters(), *module.named_buffers()] if t.device != META]
    assert not elsewhere, f"left off the meta device: {elsewhere[:5]}"


@pytest.mark.parametrize("exclude_own_keys", [False, True])
def test_the_paper_pretraining_step_reads_nothing_back(exclude_own_keys, capsys):
    config = SCDConfig.paper()
    with META:
        model = SCDNet(config)
    _all_on_meta(model)
    step = PretrainStep(model, query_optimizer(model, PretrainConfig.paper()), META, compile_mode="off",
                        precision="fp32", exclude_own_keys=exclude_own_keys)
    query, key = (torch.empty(64, 3, config.window, 25, 2, device=META) for _ in range(2))
    ids = torch.empty(64, dtype=torch.long, device=META) if exclude_own_keys else None
    step(query, key, ids=ids)  # the first step makes the optimiser's momentum buffers
    with OperatorCount() as counted:
        loss = step(query, key, ids=ids)
        readings = step.collapse_readings()  # what the log interval reads, in the same transfer as the loss
    assert loss.device == META and loss.shape == () and readings.device == META
    _all_on_meta(model)
    with capsys.disabled():
        print(f"\npaper-size pretraining step (batch 64, own keys {'excluded' if exclude_own_keys else 'kept'}): "
              f"{counted.count:,} operators")


@pytest.mark.parametrize("protocol", ["finetune", "linear"])
def test_each_protocol_training_step_reads_nothing_back(protocol, capsys):
    config = SCDConfig.paper()
    with META:
        model = DownstreamEncoder(config, 60) if protocol == "finetune" else torch.nn.Linear(config.feature_dim, 60)
    _all_on_meta(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4, foreach=True)
    x = torch.empty((128, 3, config.window, 25, 2) if protocol == "finetune" else (1024, config.feature_dim),
                    device=META)
    labels = torch.empty(x.shape[0], dtype=torch.long, device=META)
    classification_step(model, optimizer, x, labels)
    with OperatorCount() as counted:
        loss = classification_step(model, optimizer, x, labels)
    assert loss.device == META and loss.shape == ()
    with capsys.disabled():
        print(f"\n{protocol} training step ({'semi-supervised and fine-tuning' if protocol == 'finetune' else 'linear and transfer'}): "
              f"{counted.count:,} operators")


def test_a_host_read_fails_on_meta():
    """What the tests above rely on: the meta device refuses every way of reading a value."""
    t = torch.empty(3, device=META)
    for read in (lambda: t.sum().item(), t.tolist, lambda: bool(t.sum()), lambda: t + torch.ones(3)):
        with pytest.raises((RuntimeError, NotImplementedError)):
            read()

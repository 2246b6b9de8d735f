"""The pretraining step's fast paths against the plain one: torch.compile gives the same
losses (CPU, fp32), bf16 autocast stays close, and bad settings are refused by name; the
phase timer and FLOP count leave the run alone; the queue fill writes the initial keys."""
import copy

import numpy as np
import pytest
import torch

from scdfast.config import PretrainConfig, SCDConfig
from scdfast.errors import ScdError
from scdfast.models import SCDNet
from scdfast.models.moco import QUEUE_NAMES
from scdfast.train.phases import PHASES, PhaseTimer, step_flops
from scdfast.train.step import PretrainStep
from scdfast.train.views import epoch_order, queue_fill_batches

CONFIG = SCDConfig.tiny(queue_size=64, dropout=0.0)


def _losses(compile_mode="off", precision="fp32", steps=3, device="cpu"):
    torch.manual_seed(0)
    model = SCDNet(CONFIG).to(device)
    optimizer = torch.optim.SGD(model.query_encoder.parameters(), lr=0.05, momentum=0.9)
    step = PretrainStep(model, optimizer, torch.device(device), compile_mode=compile_mode, precision=precision)
    g = torch.Generator().manual_seed(1)
    out = []
    for _ in range(steps):
        q, k = (torch.randn(8, 3, CONFIG.window, 25, 2, generator=g).to(device) for _ in range(2))
        out.append(step(q, k).item())
    return torch.tensor(out)


@pytest.mark.slow
def test_compiled_step_equals_eager():
    # compiling both encoders on the CPU takes about two minutes
    torch.testing.assert_close(_losses("default"), _losses("off"), rtol=1e-5, atol=1e-5)


@pytest.mark.gpu
@pytest.mark.parametrize("compile_mode,precision", [("off", "fp32"), ("default", "bf16")])
def test_the_gpu_step_with_the_fused_loss_follows_the_cpu_step(compile_mode, precision, device):
    """The GPU tier: the step on CUDA (the fused Triton loss, tf32 or bf16) tracks the CPU step."""
    torch.testing.assert_close(_losses(compile_mode, precision, steps=3, device=device), _losses(steps=3),
                               rtol=0.05, atol=0.05)


def test_bf16_autocast_step_is_close_to_fp32():
    torch.testing.assert_close(_losses(precision="bf16", steps=2), _losses(steps=2), rtol=0.05, atol=0.05)


def test_auto_precision_is_bf16_where_the_cpu_multiplies_it(monkeypatch):
    import scdfast.train.step as step_module
    for native, want in ((True, "bf16"), (False, "fp32")):
        monkeypatch.setattr(step_module, "cpu_bf16", lambda native=native: native)
        assert step_module.resolve_precision("auto", torch.device("cpu")) == want
    assert step_module.resolve_precision("fp32", torch.device("cuda")) == "fp32"


def test_auto_compiles_on_cuda_only():
    from scdfast.train.step import resolve_compile
    assert resolve_compile("auto", torch.device("cpu")) is None
    assert resolve_compile("auto", torch.device("cuda")) == "default"
    assert resolve_compile("default", torch.device("cpu")) == "default"
    assert resolve_compile("off", torch.device("cuda")) is None


@pytest.mark.parametrize("kwargs, message", [
    ({"compile_mode": "fastest"}, "compile='fastest'"),
    ({"precision": "fp8"}, "precision='fp8'"),
    ({"bn_mode": "shuffle"}, "needs several processes"),
])
def test_bad_settings_are_named(kwargs, message):
    model = SCDNet(CONFIG)
    optimizer = torch.optim.SGD(model.query_encoder.parameters(), lr=0.1)
    with pytest.raises(ScdError, match=message):
        PretrainStep(model, optimizer, torch.device("cpu"), **kwargs)


def test_flop_count_is_per_sample_and_leaves_the_run_untouched():
    model = SCDNet(CONFIG)
    views = [torch.randn(6, 3, CONFIG.window, 25, 2) for _ in range(2)]
    state = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    flops = step_flops(model, *views)
    assert torch.equal(torch.get_rng_state(), rng), "dropout's draws would shift a resumed run"
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items()), "BatchNorm statistics changed"
    assert all(p.grad is None for p in model.parameters())
    assert flops > 0 and step_flops(model, *(torch.cat([v, v]) for v in views)) == 2 * flops


def test_the_flop_count_is_the_models_not_the_cpu_paths():
    """The CPU's paths accumulate products in place, which the FLOP counter misses; the count is
    the model's own, as a model built on the meta device counts it (the generic paths)."""
    from torch.utils.flop_counter import FlopCounterMode
    views = [torch.randn(6, 3, CONFIG.window, 25, 2) for _ in range(2)]
    with torch.device("meta"):
        meta_model = SCDNet(CONFIG)
    counter = FlopCounterMode(display=False)
    with counter:
        with torch.no_grad():
            meta_model.key_encoder(views[1].to("meta"))
        sum(z.float().square().mean() for z in meta_model.query_encoder(views[0].to("meta"))).backward()
    assert step_flops(SCDNet(CONFIG), *views) == counter.get_total_flops()


def test_a_timed_step_splits_its_phases_and_computes_the_same_loss():
    def run(timer):
        torch.manual_seed(0)
        model = SCDNet(CONFIG)
        step = PretrainStep(model, torch.optim.SGD(model.query_encoder.parameters(), lr=0.05), torch.device("cpu"),
                            precision="fp32")
        g = torch.Generator().manual_seed(1)
        return step(*(torch.randn(8, 3, CONFIG.window, 25, 2, generator=g) for _ in range(2)), timer=timer)
    timer = PhaseTimer(torch.device("cpu"))
    assert torch.equal(run(timer), run(None))
    assert timer.steps == 1 and all(timer.per_step()[phase] > 0 for phase in PHASES)


def test_queue_fill_writes_the_initial_key_encoders_keys():
    config = SCDConfig.tiny(queue_size=16, dropout=0.0)
    model = SCDNet(config)
    reference = copy.deepcopy(model)
    step = PretrainStep(model, torch.optim.SGD(model.query_encoder.parameters(), lr=0.1), torch.device("cpu"),
                        precision="fp32")
    views = [torch.randn(8, 3, config.window, 25, 2) for _ in range(2)]
    for view in views:
        step.enqueue_keys(view)
    expected = [torch.cat(keys) for keys in zip(*(reference.encode_keys(v) for v in views))]
    for queue, want in zip(model.queues, expected):
        torch.testing.assert_close(queue, want)
    assert all(int(model.banks[name].ptr) == 0 for name in QUEUE_NAMES), "K keys: back at the start"


def test_queue_fill_batches_cover_the_data_apart_from_training_order():
    batches = queue_fill_batches(seed=0, num_samples=10, batch_size=4, count=5)
    assert [len(b) for b in batches] == [4] * 5
    flat = np.concatenate(batches)
    assert sorted(flat[:10]) == list(range(10)) and sorted(flat[10:20]) == list(range(10))
    assert not np.array_equal(flat[:10], epoch_order(0, 0, 10))
    with pytest.raises(ScdError, match="queue_init='zeros'"):
        PretrainConfig(queue_init="zeros")


def test_own_keys_are_labelled_and_left_out_of_the_negatives(monkeypatch):
    import scdfast.train.step as step_module
    config = SCDConfig.tiny(queue_size=16, dropout=0.0)
    model = SCDNet(config)
    step = PretrainStep(model, torch.optim.SGD(model.query_encoder.parameters(), lr=0.1), torch.device("cpu"),
                        precision="fp32", exclude_own_keys=True)
    view = lambda: torch.randn(8, 3, config.window, 25, 2)  # noqa: E731
    step.enqueue_keys(view(), torch.arange(8))
    step.enqueue_keys(view(), torch.arange(8, 16))
    assert torch.equal(model.queue_ids, torch.arange(16))
    seen = {}
    real = step_module.scd_loss

    def spy(*args, **kwargs):
        seen.update({k: None if kwargs[k] is None else kwargs[k].clone() for k in ("query_ids", "queue_ids")})
        return real(*args, **kwargs)
    monkeypatch.setattr(step_module, "scd_loss", spy)
    ids = torch.tensor([3, 20, 21, 22, 23, 24, 25, 9])
    step(view(), view(), ids=ids)
    assert torch.equal(seen["query_ids"], ids) and torch.equal(seen["queue_ids"], torch.arange(16))
    assert torch.equal(model.queue_ids, torch.cat([ids, torch.arange(8, 16)])), "ids follow the keys' rows"
    with pytest.raises(ScdError, match="query_ids is required"):
        step(view(), view())

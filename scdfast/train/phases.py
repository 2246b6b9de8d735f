"""Where a pretraining step's time goes, and how much of the GPU's arithmetic it uses.

The loop never waits for the device, so phase times cannot be read from ordinary steps. A
`PhaseTimer` is handed to one sampled step per log interval, which then synchronises at each
phase boundary (forward: momentum update, keys, queries and loss; backward; optimiser: SGD and
enqueue). Model FLOPs per step are counted once by PyTorch's FLOP counter on the eager encoders,
and model FLOP utilisation is achieved FLOP/s over the device's dense bf16 peak.
"""
from __future__ import annotations

import time

import torch
from torch.func import functional_call
from torch.utils.flop_counter import FlopCounterMode

PHASES = ("forward", "backward", "optimiser")

# Dense (no sparsity) bf16 tensor-core peaks from the vendors' data sheets, TFLOP/s, by words
# of torch.cuda.get_device_name; the first match wins (an SXM H100 is "NVIDIA H100 80GB HBM3").
PEAK_BF16_TFLOPS = ((("H100", "PCIe"), 756.0), (("H100", "NVL"), 835.0), (("H100",), 989.0), (("H200",), 989.0),
                    (("A100",), 312.0), (("L40S",), 362.0))


def _synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class PhaseTimer:
    def __init__(self, device: torch.device):
        self.device = device
        self.seconds = dict.fromkeys(PHASES, 0.0)
        self.steps = 0
        self._last = 0.0

    def start(self) -> None:
        _synchronise(self.device)
        self._last = time.perf_counter()

    def mark(self, phase: str) -> None:
        """The time since the previous mark belongs to `phase`."""
        _synchronise(self.device)
        now = time.perf_counter()
        self.seconds[phase] += now - self._last
        self._last = now
        self.steps += phase == PHASES[-1]

    def per_step(self) -> dict[str, float]:
        """Mean seconds per sampled step in each phase."""
        return {phase: s / max(self.steps, 1) for phase, s in self.seconds.items()}


def step_flops(model, query_view: torch.Tensor, key_view: torch.Tensor) -> int:
    """Model FLOPs of one step: query encoder forward and backward, key encoder forward
    (the loss and the optimiser are negligible next to them), counted on the eager encoders.
    The model's parameters, buffers, gradients and the random state are left as they were.

    For CPU views the encoders run on the meta device, on stand-ins of their parameters: no
    arithmetic (an fp32 step of the tiny preset took 3 s), and the model's own count, where the
    CPU's paths accumulate products in place (`baddbmm_`), which the counter does not see."""
    on_meta = query_view.device.type == "cpu"

    def run(encoder, view, grad):
        if not on_meta:
            return encoder(view)
        tensors = {name: torch.empty_like(p, device="meta").requires_grad_(grad and p.requires_grad)
                   for name, p in encoder.named_parameters()}
        tensors.update((name, torch.empty_like(b, device="meta")) for name, b in encoder.named_buffers())
        return functional_call(encoder, tensors, (view.to("meta"),))

    buffers = {} if on_meta else {name: b.clone() for name, b in model.named_buffers()}
    counter = FlopCounterMode(display=False)
    devices = [query_view.device.index or 0] if query_view.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices), counter:  # dropout's draws leave the run's stream alone
        with torch.no_grad():
            run(model.key_encoder, key_view, grad=False)
        sum(z.float().square().mean() for z in run(model.query_encoder, query_view, grad=True)).backward()
    model.query_encoder.zero_grad(set_to_none=True)
    with torch.no_grad():
        live = dict(model.named_buffers())
        for name, b in buffers.items():
            live[name].copy_(b)
    return int(counter.get_total_flops())


def peak_flops(device: torch.device) -> float | None:
    """The device's dense bf16 peak in FLOP/s, where its name is known; None on the CPU."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for words, tflops in PEAK_BF16_TFLOPS:
        if all(word in name for word in words):
            return tflops * 1e12
    return None

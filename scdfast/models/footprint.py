"""What a model of a given config holds, known before any of it is allocated: a config read
from a file or a checkpoint (`d_model = 100000000`) is refused in one line instead of failing
in the allocator or being killed for memory."""
from __future__ import annotations

import os

from scdfast.config import SCDConfig
from scdfast.errors import ScdError


def clue_encoder_weights_at_least(config: SCDConfig) -> int:
    """A lower bound on one ClueEncoder's parameters: its Linear weight matrices (two token
    embeddings and, per transformer layer, attention and feed-forward, in both branches), which
    are nearly all of it at any size (tests/test_model.py checks the bound against the count).
    Arithmetic on the config alone: building even a meta model costs a second in a new process."""
    d, ff, c = config.d_model, config.feedforward, config.gcn_channels
    frame_token = config.num_bodies * config.num_joints * c     # the temporal branch's token width
    joint_token = config.window * c                             # the spatial branch's
    embeddings = (frame_token + d) * d + (joint_token + d) * d
    layers = 2 * config.num_layers * (4 * d * d + 2 * d * ff)
    return embeddings + layers


def available_host_bytes() -> int:
    """Memory the kernel could give this process now (MemAvailable), or the machine's total."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def require_host_memory(config: SCDConfig) -> None:
    """Refuse a config whose encoder's float32 weights alone exceed the memory available."""
    count = clue_encoder_weights_at_least(config)
    need, available = 4 * count, available_host_bytes()
    if need > available:
        raise ScdError(f"SCDConfig: d_model={config.d_model}, gcn_channels={config.gcn_channels}, window="
                       f"{config.window}: one encoder would hold over {count:,} parameters ({need / 2**30:,.1f} "
                       f"GiB), more than the {available / 2**30:.1f} GiB of memory available; choose smaller "
                       "model sizes")

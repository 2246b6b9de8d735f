"""The DALI stream on the CPU: every file once per epoch, values intact, frame counts right,
and its batches go straight into the batched augmentation kernels."""
import builtins
import os

import numpy as np
import pytest
import torch

from scdfast.augment.batched import BatchAugmenter
from scdfast.data.dali_stream import NUM_FRAMES_FILE, DaliStream, frames_in_use
from scdfast.errors import ScdError


def _write_samples(root, rng, count=10, frames=40):
    samples = {}
    for i in range(count):
        x = rng.normal(size=(3, frames, 25, 2)).astype(np.float32)
        x[:, int(rng.integers(5, frames)):] = 0  # zero padding after the last real frame
        name = f"sample{i:03d}.npy"
        np.save(os.path.join(root, name), x)
        samples[name] = x
    return samples


def test_frames_in_use_counts_up_to_the_last_nonzero_frame():
    x = torch.zeros(3, 3, 10, 25, 2)
    x[0, :, :4] = 1.0
    x[1, 0, 6, 3, 1] = 2.0  # one coordinate is enough
    assert frames_in_use(x).tolist() == [4, 7, 1]  # an empty sample counts one frame


def test_stream_reads_every_file_once_per_epoch(tmp_path, rng):
    pytest.importorskip("nvidia.dali")
    samples = _write_samples(tmp_path, rng)
    stream = DaliStream(str(tmp_path), batch_size=5, device=torch.device("cpu"), seed=3, num_threads=1)
    assert len(stream) == 2
    seen = []
    for _ in range(len(stream)):
        batch = stream.next_batch()
        for row, nf in zip(batch.data, batch.num_frames):
            match = [n for n, x in samples.items() if np.array_equal(x, row.numpy())]
            assert len(match) == 1
            seen.append(match[0])
            assert nf == frames_in_use(torch.from_numpy(samples[match[0]])[None])[0]
    assert sorted(seen) == sorted(samples)


def test_stream_uses_num_frames_file_and_feeds_the_augmenter(tmp_path, rng):
    pytest.importorskip("nvidia.dali")
    samples = _write_samples(tmp_path, rng, count=6)
    counts = rng.integers(1, 41, size=6)
    np.save(tmp_path / NUM_FRAMES_FILE, counts)
    stream = DaliStream(str(tmp_path), batch_size=3, device=torch.device("cpu"), num_threads=1)
    batch = stream.next_batch()
    by_name = dict(zip(sorted(samples), counts))
    for row, nf in zip(batch.data, batch.num_frames):
        name = next(n for n, x in samples.items() if np.array_equal(x, row.numpy()))
        assert nf == by_name[name]
    views = BatchAugmenter(16, backend="cpu")(batch.data, batch.num_frames, torch.cat([batch.index, batch.index]), 0)
    assert views.shape == (6, 3, 16, 25, 2) and torch.isfinite(views).all()


def test_bad_inputs(tmp_path, rng):
    pytest.importorskip("nvidia.dali")
    with pytest.raises(ScdError, match="no such directory"):
        DaliStream(str(tmp_path / "missing"), 2, torch.device("cpu"))
    _write_samples(tmp_path, rng, count=3)
    with pytest.raises(ScdError, match="fewer than batch_size"):
        DaliStream(str(tmp_path), 4, torch.device("cpu"))
    np.save(tmp_path / NUM_FRAMES_FILE, np.ones(2, dtype=np.int64))
    with pytest.raises(ScdError, match="one per sample file"):
        DaliStream(str(tmp_path), 2, torch.device("cpu"))


def test_missing_extra_gives_install_hint(monkeypatch):
    real_import = builtins.__import__

    def no_dali(name, *args, **kwargs):
        if name.startswith("nvidia"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_dali)
    with pytest.raises(ScdError, match=r"scdfast\[dali\]"):
        DaliStream(".", 2, torch.device("cpu"))

"""What every `scdfast prepare` importer shares: reading each raw file with `--skip-bad`
semantics, and writing variable-length sequences as a dataset directory."""
from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from functools import partial

from tqdm.auto import tqdm

from scdfast.data.layouts import SkeletonLayout, centred
from scdfast.data.writer import DatasetWriter
from scdfast.errors import ScdError


def _attempt(read: Callable, path: str):
    """(True, read(path)) or (False, the error's message): a worker's error crosses back as data."""
    try:
        return True, read(path)
    except ScdError as exc:
        return False, str(exc)


def read_each(paths: list[str], read: Callable, skip_bad: bool, skipped: list[str], desc: str,
              progress: bool = True, pool=None) -> Iterator[tuple[str, object]]:
    """Yield (path, read(path)) in order. A file whose read raises ScdError stops the run with
    that error, or with `skip_bad` is left out and its message appended to `skipped`. `pool`
    (an executor) reads files in worker processes; `read` must then be a module-level function."""
    mapper = partial(pool.map, chunksize=8) if pool is not None else map
    outcomes: Iterable = mapper(partial(_attempt, read), paths)
    for path, (ok, value) in tqdm(zip(paths, outcomes), total=len(paths), desc=desc, unit="file",
                                  disable=not progress):
        if ok:
            yield path, value
        elif skip_bad:
            skipped.append(value)
        else:
            raise ScdError(f"{value} (--skip-bad leaves such files out)")


def require_both_splits(splits: dict, what: str) -> None:
    empty = [name for name in ("train", "val") if not splits[name]]
    if empty:
        raise ScdError(f"{what}: the {' and the '.join(empty)} split would be empty")


def write_sequences(out: str, layout: SkeletonLayout, splits: dict, skipped: list[str], bodies: int = 1,
                    sources: dict[str, str] | None = None) -> dict:
    """Write {"train": [...], "val": [...]} of (name, (T, M, V, 3) array, label) sequences as a
    dataset directory: T is the longest sequence, shorter ones are zero-padded; each sequence
    is translated so that the layout's centre joint of body 0 in frame 0 is the origin. `sources`
    ({option: path}) are the folders read, which the output may not overlap."""
    frames = max(seq.shape[0] for entries in splits.values() for _, seq, _ in entries)
    with DatasetWriter(out, layout, sources) as writer:
        for split, entries in splits.items():
            array = writer.split(split, (len(entries), 3, frames, layout.num_joints, bodies))
            for i, (_, seq, _) in enumerate(entries):
                array[i, :, : seq.shape[0]] = centred(seq, layout).transpose(3, 0, 2, 1)
            writer.finish_split(split, [n for n, _, _ in entries], [y for _, _, y in entries],
                                [seq.shape[0] for _, seq, _ in entries])
        if skipped:
            writer.write_text("skipped.txt", "\n".join(skipped) + "\n")
    return {"train": len(splits["train"]), "val": len(splits["val"]), "skipped": len(skipped), "frames": frames}

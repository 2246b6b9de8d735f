"""The optional parts of the install: `pip install scdfast` brings the losses and the model
(torch, triton, numpy); each command's other needs come with an extra, named in the one-line
error a missing one gives."""
from __future__ import annotations

# the extra that brings each optional top-level module (pyproject.toml's optional-dependencies)
EXTRA_OF_MODULE = {"numba": "train", "numba_cuda": "train", "llvmlite": "train", "tqdm": "train",
                   "tensorboard": "train", "matplotlib": "train", "scipy": "prepare", "sklearn": "figures"}
# a command whose extra differs from the train extra: it needs only its own
COMMAND_EXTRA = {"prepare": "prepare"}


def missing_extra_message(exc: ImportError, command: str) -> str | None:
    """"<command> needs <module>: pip install 'scdfast[<extra>]'", or None when the missing
    module is not one an extra brings (then it is a bug or a broken install, not this)."""
    module = (exc.name or "").split(".")[0]
    if module not in EXTRA_OF_MODULE:
        return None
    extra = COMMAND_EXTRA.get(command, EXTRA_OF_MODULE[module])
    return (f"{command} needs {module}, which `pip install scdfast` leaves out: "
            f"pip install 'scdfast[{extra}]' (or 'scdfast[all]')")

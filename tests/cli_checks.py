"""What the never-harm tests check after a command: every file's digest, and that a refusal is
one line on stderr with exit status 2."""
import hashlib
import os

import pytest
from conftest import SHARED_DATA

from scdfast.cli import main

MSR = SHARED_DATA / "msr_action3d" / "skeleton3d"
needs_msr = pytest.mark.skipif(not MSR.is_dir(), reason=f"the MSR Action3D files are not at {MSR}")


def digests(root) -> dict[str, str]:
    """Every file under root (symbolic links by their target) -> sha256 of its bytes; a run's
    .lock is left out: it names the process holding it, whichever that is."""
    out = {}
    for folder, _, files in os.walk(root):
        for name in files:
            if name == ".lock":
                continue
            path = os.path.join(folder, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, root)] = hashlib.sha256(f.read()).hexdigest()
    return out


def refused(capsys, args, message) -> str:
    """Run the command line `args`: exit status 2 and one line on stderr holding `message`."""
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert message in err, err
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    return err


def msr_raw(folder):
    """A small MSR Action3D download: 12 real files of both subject parities."""
    folder.mkdir(parents=True)
    for name in sorted(os.listdir(MSR))[::50]:
        (folder / name).symlink_to(MSR / name)
    return folder

"""The pyproject ships every subpackage (an editable install finds them by path, so a missing
name would only break a regular `pip install .`), and the light install is what it says."""
import ast
import pathlib
import re
import subprocess
import sys
import tomllib

import pytest

from scdfast.extras import EXTRA_OF_MODULE

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_every_subpackage_is_listed():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    on_disk = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "scdfast").rglob("__init__.py")}
    assert on_disk - listed == set(), "subpackages missing from pyproject's packages"
    assert config["package-dir"]["scdfast.kernels"] == "kernels" and (ROOT / "kernels" / "__init__.py").is_file()
    assert "kernels" not in listed, "no generic top-level `kernels` module"


# the modules only the extras bring, made unimportable in a child process: the light install
OPTIONAL = ("numba", "numba_cuda", "llvmlite", "tqdm", "scipy", "matplotlib", "tensorboard", "sklearn", "nvidia")
LIGHT = "import sys\nfor name in {names!r}:\n    sys.modules[name] = None\n"


def _light(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", LIGHT.format(names=OPTIONAL) + code], capture_output=True, text=True,
                          timeout=300, cwd=ROOT)


def test_the_light_install_is_torch_triton_and_numpy():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = {re.split(r"[<>=;\[ ]", requirement)[0] for requirement in project["dependencies"]}
    assert names == {"torch", "triton", "numpy"}


def test_losses_modules_and_the_model_import_without_any_extra():
    result = _light("import torch\n"
                    "from scdfast.nn import MemoryBank, NTXentLoss, SupConLoss\n"
                    "from scdfast.models import SCDNet\n"
                    "from scdfast.config import SCDConfig\n"
                    "SCDNet(SCDConfig.tiny())\n"
                    "print(float(NTXentLoss()(torch.randn(4, 8), torch.randn(4, 8))) > 0)\n")
    assert result.returncode == 0 and result.stdout.strip() == "True", result.stderr[-2000:]


@pytest.mark.parametrize("command,extra", [("pretrain", "train"), ("prepare", "prepare")])
def test_a_command_without_its_extra_names_the_extra(command, extra, tmp_path):
    args = {"pretrain": ["pretrain", "--preset", "tiny", "--epochs", "1", "--run-dir", str(tmp_path / "run")],
            "prepare": ["prepare", "ntu", "--raw", str(tmp_path / "raw"), "--out", str(tmp_path / "out")]}[command]
    (tmp_path / "raw").mkdir()
    result = _light(f"from scdfast.cli import main\nraise SystemExit(main({args!r}))\n")
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr[-2000:]
    assert f"pip install 'scdfast[{extra}]'" in lines[0], lines[0]
    assert not (tmp_path / "run").exists() and not (tmp_path / "out").exists()


def test_every_module_an_extra_brings_is_in_that_extra():
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    for module, extra in EXTRA_OF_MODULE.items():
        if module == "llvmlite":  # numba's own dependency
            continue
        wanted = {"sklearn": "scikit-learn"}.get(module, module.replace("_", "-"))
        assert any(r.startswith(wanted) for r in extras[extra]), (module, extra)


# docs/design.md's table: a package may import only packages of lower layers
LAYERS = [("errors",), ("fileio", "extras", "hostmem"), ("data",), ("graph", "config"), ("settings",), ("kernels",),
          ("losses",), ("nn",), ("augment", "models"), ("compat",), ("train",), ("evaluation",), ("doctor",),
          ("cli",), ("__main__", "")]


def _package(module: str) -> str:
    """scdfast.x.y -> x ('' for scdfast itself)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def test_every_package_imports_only_lower_layers():
    layer_of = {name: i for i, names in enumerate(LAYERS) for name in names}
    upward = []
    files = [*(ROOT / "scdfast").rglob("*.py"), *(ROOT / "kernels").glob("*.py")]
    for path in files:
        relative = path.relative_to(ROOT).with_suffix("").parts
        here = "kernels" if relative[0] == "kernels" else (relative[1] if len(relative) > 2 else
                                                           ("" if relative[1] == "__init__" else relative[1]))
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "scdfast":
                targets = [node.module] if node.module != "scdfast" else [f"scdfast.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names if a.name.split(".")[0] == "scdfast"]
            else:
                continue
            for target in targets:
                there = _package(target)
                if there != here and layer_of[there] >= layer_of[here]:
                    upward.append(f"{path.relative_to(ROOT)} imports {target}")
    assert upward == []

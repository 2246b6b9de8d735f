"""The pyproject ships every subpackage: an editable install finds them by path, so a missing
name would only break a regular `pip install .`."""
import pathlib
import tomllib

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_every_subpackage_is_listed():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    on_disk = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "scdfast").rglob("__init__.py")}
    assert on_disk - listed == set(), "subpackages missing from pyproject's packages"
    assert config["package-dir"]["scdfast.kernels"] == "kernels" and (ROOT / "kernels" / "__init__.py").is_file()
    assert "kernels" not in listed, "no generic top-level `kernels` module"

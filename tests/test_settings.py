"""One source for each choice, and every config field settable: the Literal fields checked by
the configs and offered by the CLI, --config FILE and --set section.field=value."""
import ast
import dataclasses
import json
import pathlib

import pytest
from conftest import write_synthetic_dataset

from scdfast.cli import build_parser, main
from scdfast.config import FinetuneConfig, LinearConfig, PretrainConfig, SCDConfig, choices, to_dict
from scdfast.errors import ScdError
from scdfast.settings import SECTIONS, parse_sets, read_config_file, tiny_overrides
from scdfast.train import step

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _cli_choices(command: str, flag: str) -> tuple:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices[command]
    return tuple(next(a for a in sub._actions if flag in a.option_strings).choices)


@pytest.mark.parametrize("field,flag", [("compile", "--compile"), ("precision", "--precision"), ("bn", "--bn"),
                                        ("queue_init", "--queue-init"), ("representation", "--representation"),
                                        ("augment", "--augment")])
def test_the_cli_offers_exactly_the_configs_choices(field, flag):
    assert _cli_choices("pretrain", flag) == choices(PretrainConfig, field)


def test_the_step_takes_the_configs_choices():
    assert step.COMPILE_MODES == choices(PretrainConfig, "compile")
    assert "max-autotune-no-cudagraphs" in _cli_choices("pretrain", "--compile")
    assert set(step.BN_MODES) == set(choices(PretrainConfig, "bn")) - {"auto"}


@pytest.mark.parametrize("field", ["compile", "precision", "bn", "queue_init", "representation", "augment"])
def test_a_value_outside_a_choice_is_refused_by_the_config(field):
    with pytest.raises(ScdError, match=f"{field}='nope': choose one of"):
        PretrainConfig(**{field: "nope"})


def test_every_config_field_is_documented():
    tree = ast.parse((ROOT / "scdfast" / "config.py").read_text())
    undocumented = []
    for cls in (n for n in tree.body if isinstance(n, ast.ClassDef) and n.name.endswith("Config")):
        for node, after in zip(cls.body, cls.body[1:] + [None]):
            if isinstance(node, ast.AnnAssign):
                if not (isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant)
                        and isinstance(after.value.value, str)):
                    undocumented.append(f"{cls.name}.{node.target.id}")
    assert undocumented == []


def test_set_reads_each_value_by_its_fields_type():
    got = parse_sets(["pretrain.lr=0.05", "pretrain.epochs=3", "pretrain.exclude_own_keys=true",
                      "pretrain.lr_drop_epochs=2,3", "model.dim_feedforward=none", "model.dim_feedforward=256",
                      "linear.lr=none", "pretrain.crop_ratio=0.2,0.9", "pretrain.compile=off", "model.layout=kinect20"])
    assert got == {"pretrain": {"lr": 0.05, "epochs": 3, "exclude_own_keys": True, "lr_drop_epochs": (2, 3),
                                "crop_ratio": (0.2, 0.9), "compile": "off"},
                   "model": {"dim_feedforward": 256, "layout": "kinect20"}, "linear": {"lr": None}}


@pytest.mark.parametrize("item,message", [
    ("pretrain.lr", "expected section.field=value"),
    ("lr=0.1", "expected section.field=value"),
    ("training.lr=0.1", "unknown section 'training'"),
    ("pretrain.lrr=0.1", "PretrainConfig has no field 'lrr'"),
    ("pretrain.epochs=many", "expected int, got 'many'"),
    ("pretrain.exclude_own_keys=maybe", "expected true or false"),
])
def test_a_bad_set_names_the_item(item, message):
    with pytest.raises(ScdError, match=None) as raised:
        parse_sets([item])
    assert str(raised.value).startswith(f"--set {item}: ") and message in str(raised.value)


def test_config_files_json_toml_and_a_runs_own(tmp_path):
    run = tmp_path / "config.json"
    run.write_text(json.dumps({"command": "pretrain", "data": "synthetic", "model": to_dict(SCDConfig.tiny()),
                               "pretrain": to_dict(PretrainConfig.tiny())}))
    sections = read_config_file(str(run))
    assert sorted(sections) == ["model", "pretrain"]
    assert SCDConfig(**sections["model"]) == SCDConfig.tiny() and PretrainConfig(**sections["pretrain"]) == PretrainConfig.tiny()
    toml = tmp_path / "settings.toml"
    toml.write_text("[pretrain]\nlr = 0.02\nlr_drop_epochs = [5]\n[finetune]\nepochs = 7\n")
    assert read_config_file(str(toml)) == {"pretrain": {"lr": 0.02, "lr_drop_epochs": (5,)}, "finetune": {"epochs": 7}}
    bad = tmp_path / "bad.toml"
    bad.write_text("[pretrain]\nlearning_rate = 0.1\n")
    with pytest.raises(ScdError, match="PretrainConfig has no field 'learning_rate'"):
        read_config_file(str(bad))
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(ScdError, match="not valid JSON"):
        read_config_file(str(broken))


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return write_synthetic_dataset(tmp_path_factory.mktemp("data"), max_frames=100)


def test_every_field_reaches_the_run_from_the_command_line(dataset, tmp_path):
    settings = tmp_path / "settings.toml"
    settings.write_text("[pretrain]\nepochs = 1\nbatch_size = 8\nweight_decay = 0.001\n[model]\nqueue_size = 64\n")
    run = tmp_path / "run"
    code = main(["pretrain", "--preset", "tiny", "--data", str(dataset), "--device", "cpu", "--run-dir", str(run),
                 "--no-progress", "--config", str(settings), "--batch-size", "16", "--set", "model.temperature=0.1",
                 "--set", "pretrain.sgd_momentum=0.8", "--set", "model.momentum=0.95"])
    assert code == 0
    saved = json.loads((run / "config.json").read_text())
    assert saved["pretrain"]["batch_size"] == 16, "a flag overrides the file"
    assert (saved["pretrain"]["weight_decay"], saved["pretrain"]["sgd_momentum"]) == (0.001, 0.8)
    assert (saved["model"]["queue_size"], saved["model"]["temperature"], saved["model"]["momentum"]) == (64, 0.1, 0.95)
    again = tmp_path / "again"  # the run's own config.json reproduces its settings
    assert main(["pretrain", "--preset", "paper", "--data", str(dataset), "--device", "cpu", "--run-dir", str(again),
                 "--no-progress", "--config", str(run / "config.json")]) == 0
    repeated = json.loads((again / "config.json").read_text())
    assert repeated["model"] == saved["model"] and repeated["pretrain"] == saved["pretrain"]


@pytest.mark.parametrize("args,message", [
    (["linear", "--random-init", "--set", "pretrain.lr=0.1"], "settings for [pretrain] do not apply"),
    (["knn", "--random-init", "--set", "linear.lr=0.1"], "takes no config section"),
    (["pretrain", "--set", "model.num_joints=20"], "the dataset fixes num_joints to 25"),
    (["pretrain", "--set", "pretrain.compile=fast"], "compile='fast': choose one of"),
])
def test_settings_a_command_cannot_take_are_refused(args, message, dataset, tmp_path, capsys):
    code = main([*args, "--preset", "tiny", "--data", str(dataset), "--device", "cpu", "--run-dir",
                 str(tmp_path / "run"), "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and message in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "run").exists()


def test_presets_come_from_one_mechanism():
    for kind in (SCDConfig, PretrainConfig, LinearConfig, FinetuneConfig):
        assert kind.tiny() == kind(**kind._TINY)
        assert kind.paper() == kind()
        assert set(kind._TINY) <= {f.name for f in dataclasses.fields(kind)}


def test_the_tiny_presets_help_lists_exactly_what_it_changes():
    """`--preset tiny`'s help is built from the `_TINY` dicts: read back as `--set` items on
    the paper's defaults, it must give every section's tiny preset."""
    sections = parse_sets(tiny_overrides().split())
    for name, kind in SECTIONS.items():
        assert kind(**sections.get(name, {})) == kind.tiny()
        assert kind() != kind.tiny()

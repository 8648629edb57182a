import pytest

from fedsparse.config import ExperimentConfig, dump_config, load_config
from fedsparse.errors import ConfigError


def write(tmp_path, text: str):
    path = tmp_path / "c.toml"
    path.write_text(text)
    return path


def test_defaults_and_file_values(tmp_path):
    cfg = load_config(write(tmp_path, 'seed = 3\n[model]\nname = "lightgcn"\n[train]\nlr = 1\n'))
    assert cfg.seed == 3 and cfg.model.name == "lightgcn"
    assert cfg.train.lr == 1.0 and isinstance(cfg.train.lr, float)
    assert cfg.model.dim == ExperimentConfig().model.dim


def test_overrides_take_precedence(tmp_path):
    cfg = load_config(write(tmp_path, "[train]\nepochs = 3\n"),
                      ["train.epochs=7", "data.name=gowalla", "model.dim=16", "train.lr=5e-3"])
    assert (cfg.train.epochs, cfg.data.name, cfg.model.dim, cfg.train.lr) == (7, "gowalla", 16, 5e-3)


@pytest.mark.parametrize(("text", "overrides", "message"), [
    ("[train]\nepoch = 3\n", [], "train.epoch: unknown key"),
    ("colour = 1\n", [], "colour: unknown key"),
    ("", ["model.dims=3"], "model.dims: unknown key"),
    ('[train]\nepochs = "ten"\n', [], "train.epochs: expected an integer"),
    ("[train]\nepochs = 2.5\n", [], "train.epochs: expected an integer"),
    ("[train]\nepochs = true\n", [], "train.epochs: expected an integer"),
    ("", ["train.lr=-1"], r"train.lr: must be > 0.0"),
    ("", ["train.epochs=0"], r"train.epochs: must be >= 1"),
    ("", ["model.name=transformer"], "model.name: must be one of mf, lightgcn"),
    ("", ["fl.privacy.training=noisy"], "fl.privacy.training: must be one of secure_sum, plain"),
    ("", ["fl.privacy.min_aggregate=1"], r"fl.privacy.min_aggregate: must be >= 2"),
    ("", ["fl.privacy.mask_neighbours=3"], "fl.privacy.mask_neighbours: must be even"),
    ("", ["fl.privacy.fraction_bits=60"], r"fl.privacy.fraction_bits: must be <= 48"),
    ("", ["fl.privacy.export_user_rows=1"], "fl.privacy.export_user_rows: expected true or false"),
    ("[fl.privacy]\nseed = 1\n", [], "fl.privacy.seed: unknown key"),
    ("train = 3\n", [], "train: expected a table"),
    ("[train\n", [], "invalid TOML"),
    ("", ["novalue"], "expected key=value"),
])
def test_bad_config_names_the_key_in_one_line(tmp_path, text, overrides, message):
    with pytest.raises(ConfigError, match=message) as info:
        load_config(write(tmp_path, text), overrides)
    assert "\n" not in str(info.value)


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.toml")


def test_dump_then_load_round_trips(tmp_path):
    cfg = load_config(None, ["seed=9", "model.name=lightgcn", "train.negatives=4"])
    dump_config(cfg, tmp_path / "out.toml")
    assert load_config(tmp_path / "out.toml") == cfg


def test_every_shipped_config_loads():
    from pathlib import Path

    configs = sorted(Path(__file__).resolve().parent.parent.glob("configs/**/*.toml"))
    assert configs
    for path in configs:
        load_config(path)

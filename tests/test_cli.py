import json
import subprocess
import sys

import pytest
from helpers import ROOT, SYN
from PIL import Image

from animegen.cli import build_parser, main

TINY_SG = ["--arch", "stylegan", "--resolution", "16", "--z-dim", "16", "--w-dim", "16", "--mapping-layers", "2",
           "--channel-base", "128", "--channel-max", "32", "--batch", "8", "--no-progress"]


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "model"
    assert main(["train", "--data", SYN, "--out", str(out), "--conditional", "--kimg", "0.08", *TINY_SG]) == 0
    return out


def test_every_command_has_help():
    commands = build_parser()._subparsers._group_actions[0].choices
    assert {"train", "sample", "interpolate", "mix", "truncate"} <= set(commands)
    for name in commands:
        with pytest.raises(SystemExit) as e:
            main([name, "--help"])
        assert e.value.code == 0


def test_console_script_entry_point_runs():
    r = subprocess.run([sys.executable, "-m", "animegen.cli", "--version"], capture_output=True, text=True,
                       env={"PYTHONPATH": str(ROOT / "src"), "PATH": ""})
    assert r.returncode == 0 and r.stdout.startswith("animegen ")


def test_latent_commands_write_their_files(model, tmp_path):
    classes = json.loads((model / "config.json").read_text())
    assert classes["conditional"]
    assert main(["sample", str(model), "--out", str(tmp_path / "s"), "--n", "3", "--psi", "0.7",
                 "--device", "cpu"]) == 0
    pngs = list((tmp_path / "s").rglob("*.png"))
    assert len(pngs) >= 6 * 3 + 1  # 3 per class for 6 classes, plus grids
    assert main(["interpolate", str(model), "--out", str(tmp_path / "i"), "--method", "circular", "--space", "w",
                 "--steps", "2", "--rows", "2", "--device", "cpu"]) == 0
    gif = Image.open(tmp_path / "i" / "interp.gif")
    assert gif.info.get("loop") == 0
    assert main(["mix", str(model), "--out", str(tmp_path / "m"), "--rows", "2", "--cols", "3",
                 "--class", "blonde hair red eyes", "--device", "cpu"]) == 0
    assert (tmp_path / "m" / "mix_coarse.png").exists()
    assert main(["truncate", str(model), "--out", str(tmp_path / "t"), "--n", "2", "--device", "cpu"]) == 0
    w, h = Image.open(tmp_path / "t" / "truncation.png").size
    assert w > h  # 7 psi columns, 2 rows


def test_latent_command_errors_are_clear(model, tmp_path, capsys):
    assert main(["mix", str(model), "--out", str(tmp_path), "--class", "green hair", "--device", "cpu"]) == 2
    assert "unknown class" in capsys.readouterr().err
    assert main(["sample", str(tmp_path / "nothing"), "--out", str(tmp_path)]) == 2
    assert "no checkpoint" in capsys.readouterr().err


@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_resolve(path):
    from animegen.train.config import TrainConfig, load_config_file

    cfg = TrainConfig.from_dict(load_config_file(path)).with_arch_defaults()
    assert cfg.arch in ("dcgan", "stylegan") and cfg.kimg > 0

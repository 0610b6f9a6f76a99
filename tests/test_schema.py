"""One schema per stage: every option is declared once, on its Config field (type, default, help, choices, the
pipeline's "unset" value), and the CLI flags, the pipeline's parameters, the compile flags and the README tables
are generated from it; one coercion path and one validation hook."""
import dataclasses
import json
import re

import pytest
from helpers import ROOT

from animegen.cli import build_parser, main
from animegen.config import Config, coerce, coerce_value, option, options
from animegen.data.ingest import IngestConfig
from animegen.eval.compare import CompareConfig
from animegen.eval.evaluate import EvalConfig, FidConfig
from animegen.labels.cluster import ClusterConfig
from animegen.labels.colour import TaggerPredictConfig
from animegen.labels.colour_train import TaggerTrainConfig
from animegen.labels.label import LabelConfig
from animegen.labels.rules import ClassRules
from animegen.pipelines.pipeline import PARAMETERS, PipelineOptions, PipelineParams, check_params
from animegen.train.config import TrainConfig

CONFIGS = (TrainConfig, IngestConfig, LabelConfig, ClassRules, TaggerTrainConfig, TaggerPredictConfig, ClusterConfig,
           EvalConfig, FidConfig, CompareConfig, PipelineParams, PipelineOptions)
COMMANDS = {("train",): TrainConfig, ("ingest",): IngestConfig, ("label",): LabelConfig,
            ("tagger", "train"): TaggerTrainConfig, ("tagger", "predict"): TaggerPredictConfig,
            ("cluster",): ClusterConfig, ("evaluate",): EvalConfig, ("fid",): FidConfig, ("compare",): CompareConfig}


@pytest.mark.parametrize("cls", CONFIGS, ids=lambda c: c.__name__)
def test_every_option_has_one_line_help(cls):
    for o in options(cls):
        assert o.help and "\n" not in o.help, f"{cls.__name__}.{o.name} has no help"
        assert o.describe().startswith(o.help)


@pytest.mark.parametrize("cls", CONFIGS, ids=lambda c: c.__name__)
def test_one_validation_hook(cls):
    for name in ("validated", "resolved"):
        assert not hasattr(cls, name), f"{cls.__name__}.{name}: the one hook is validate()"
    assert "__post_init__" not in vars(cls), f"{cls.__name__}: validate() is the hook, Config.__post_init__ runs it"


def _subparser(path):
    parser = build_parser()
    for name in path:
        action = next(a for a in parser._actions if isinstance(a, type(parser._subparsers._group_actions[0])))
        parser = action.choices[name]
    return parser


@pytest.mark.parametrize("path", list(COMMANDS), ids=" ".join)
def test_cli_flags_and_help_come_from_the_schema(path):
    cls = COMMANDS[path]
    actions = {a.dest: a for a in _subparser(path)._actions}
    for o in options(cls):
        assert o.name in actions, f"animegen {' '.join(path)}: no flag for {o.name}"
        assert actions[o.name].help == o.describe().replace("%", "%%")
        assert not re.fullmatch(r"default: .*", actions[o.name].help)


def test_choices_are_checked_with_the_valid_values_named():
    with pytest.raises(ValueError, match=r"unknown embedder 'kmeans'.*valid: auto, resnet50, colour"):
        ClusterConfig(embedder="kmeans")
    with pytest.raises(ValueError, match="valid: all, train, heldout"):
        EvalConfig.from_dict({"reference_split": "test"})
    with pytest.raises(ValueError, match="valid: linear, slerp, circular"):
        EvalConfig(interp_method="cubic")
    with pytest.raises(ValueError, match="valid: stem, id, source, row"):
        TaggerPredictConfig(key="name")
    assert main(["evaluate", "m", "--data", "d", "--out", "o", "--inception-backend", "tf"]) == 2


def test_one_coercion_path_kfp_floats_bools_lists_dicts():
    # KFP hands every number of a dict parameter over as a float
    cfg = LabelConfig.from_dict({"batch": 32.0, "rules": {"min_per_class": 2.0, "threshold": 1}})
    assert cfg.batch == 32 and type(cfg.batch) is int and cfg.rules.min_per_class == 2
    assert cfg.rules.threshold == 1.0 and type(cfg.rules.threshold) is float
    with pytest.raises(ValueError, match=r"batch=3\.5: expected int"):
        TrainConfig.from_dict({"batch": 3.5})
    with pytest.raises(ValueError, match="min_per_class=2.5: expected int"):
        LabelConfig.from_dict({"rules": {"min_per_class": 2.5}})
    with pytest.raises(ValueError, match="expected bool"):
        TrainConfig.from_dict({"xflip": 1})
    with pytest.raises(ValueError, match="expected int"):
        TrainConfig.from_dict({"batch": True})
    assert TrainConfig.from_dict({"betas": [0, 1]}).betas == [0.0, 1.0]
    assert TrainConfig.from_dict({"class_map": {"a": "b"}}).class_map == {"a": "b"}
    with pytest.raises(ValueError, match="unknown TrainConfig option"):
        coerce(TrainConfig, {"lr": 1e-3})
    # text (a flag or --param): parsed as the field's type
    assert coerce_value(bool, "yes", "x", text=True) is True and coerce_value(bool, "off", "x", text=True) is False
    assert coerce_value(int, "7", "x", text=True) == 7 and coerce_value(int, "7.0", "x", text=True) == 7
    assert coerce_value(list[str], "a, b", "x", text=True) == ["a", "b"]
    assert coerce_value(dict, '{"fit": "pad"}', "x", text=True) == {"fit": "pad"}
    with pytest.raises(ValueError, match="expected int"):
        coerce_value(int, "7", "x")  # a string from a config file is not an int
    # the components' build_config goes through from_dict (runtime.coerce is gone)
    from animegen.components import runtime as rt

    assert not hasattr(rt, "coerce")
    assert rt.build_config(EvalConfig, {"grid_n": 2.0}, {"n_fid": 8.0, "batch": None}).grid_n == 2
    # the schema's "unset" values (what a pipeline parameter passes for the default) leave the Config default
    cfg = rt.build_config(TrainConfig, {}, {"batch": 0, "r1_gamma": -1.0, "init_class": "", "ema_kimg": 0.0,
                                            "snapshot_kimg": 0.0, "freeze_d": 0})
    assert (cfg.batch, cfg.r1_gamma, cfg.init_class, cfg.ema_kimg, cfg.snapshot_kimg) == (None, None, None, 0.0, 50.0)
    assert cfg.freeze_d == 0  # no unset value: 0 is 0
    assert rt.build_config(IngestConfig, {}, {"channels": 0, "grow_to": 0}).channels is None


def test_validation_runs_on_from_dict_and_construction():
    with pytest.raises(ValueError, match="n_fid"):
        EvalConfig.from_dict({"n_fid": 1})
    with pytest.raises(ValueError, match="k_min"):
        ClusterConfig(k_min=5, k_max=4)
    with pytest.raises(ValueError, match="batch must be"):
        dataclasses.replace(TrainConfig(), batch=0)
    assert ClassRules.from_dict({"mode": "eyes"}).mode == "eye"  # the hook may normalise a spelling


def test_pipeline_parameters_come_from_the_stage_options():
    assert list(PARAMETERS) == [f.name for f in dataclasses.fields(PipelineParams)]
    base = option(TrainConfig, "channel_base").help
    assert base in PARAMETERS["sg_channel_base"].help and base in PARAMETERS["dcgan_channel_base"].help
    assert PARAMETERS["sg_channel_base"].help.endswith("(0 = 4096)")
    assert PARAMETERS["dcgan_batch"].help.endswith("(0 = 128)")
    assert option(EvalConfig, "n_fid").help == PARAMETERS["n_fid"].help
    assert "(< 0 = 10.0)" in PARAMETERS["sg_r1_gamma"].help
    # the formula is written once in the source tree
    hits = [p for p in (ROOT / "src").rglob("*.py") if "min(channel_max, channel_base / r)" in p.read_text()]
    assert [p.name for p in hits] == ["config.py"] and hits[0].parent.name == "train"
    assert check_params({"n_fid": 7.0})["n_fid"] == 7
    with pytest.raises(ValueError, match="expected int"):
        check_params({"n_fid": 7.5})
    with pytest.raises(ValueError, match="valid: pair, hair, eye, multi_hot"):
        check_params({"label_mode": "colour"})
    with pytest.raises(ValueError, match="valid: concat, projection"):
        check_params({"sg_cond_mode": "film"})


def test_params_command(capsys):
    assert main(["pipeline", "params", "--markdown"]) == 0
    table = capsys.readouterr().out
    assert table.startswith("| parameter | type | default | meaning |")
    assert all(f"| `{name}` |" in table for name in PARAMETERS)
    assert main(["pipeline", "compile", "--out", "/nonexistent/x.yaml", "--param", "n_fid=7.5"]) == 2
    assert "expected int" in capsys.readouterr().err


def test_compile_flags_come_from_pipeline_options():
    actions = {a.dest: a for a in _subparser(("pipeline", "compile"))._actions}
    for o in options(PipelineOptions):
        assert o.name in actions and actions[o.name].help == o.describe().replace("%", "%%")
    assert "--retries" in actions["retries"].option_strings
    # placement is a run parameter now (PipelineParams), never also a compile flag: one schema per option
    from animegen.pipelines.params import PipelineParams

    both = {o.name for o in options(PipelineOptions)} & {o.name for o in options(PipelineParams)}
    assert not both, both
    for gone in ("gpu_tolerations", "gpu_node_selector", "gpus", "accelerator", "gpu_cpu", "gpu_memory"):
        assert gone not in actions, gone


def test_readme_parameter_tables_are_current():
    from animegen.pipelines.docs import stale

    assert stale() == [], "run `animegen pipeline params --write-readmes` and commit the READMEs"


def test_help_dicts_are_gone():
    import animegen.cli as cli

    for name in ("TRAIN_HELP", "INGEST_HELP", "LABEL_HELP"):
        assert not hasattr(cli, name)
    assert json.loads(json.dumps(PipelineParams().to_dict())) == {k: p.default for k, p in PARAMETERS.items()}


def test_config_base_is_shared():
    assert all(issubclass(c, Config) for c in CONFIGS)

"""`animegen <command>`: the command line over the library's stage functions.

Every stage command's flags and their help are generated from the stage's Config dataclass (``animegen.config``);
the pipeline commands live beside the pipeline, in ``animegen.pipelines.cli``."""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from animegen import __version__
from animegen.config import Option, coerce_value, load_config_file, options


def add_config_options(parser: argparse.ArgumentParser | argparse._ArgumentGroup, cls: type,
                       skip: tuple[str, ...] = ()) -> None:
    """One --flag per option of the Config dataclass ``cls`` (nested configs flattened: dest 'outer.inner'), its
    help from the option's metadata. Defaults are SUPPRESSed so that only flags actually given override a --config
    file; values are converted by the one coercion path (:func:`animegen.config.coerce_value`)."""
    for o in options(cls):
        if o.name in skip:
            continue
        name = o.name.rsplit(".", 1)[-1]
        flag = "--" + (o.flag or name.replace("_", "-"))
        kw = dict(default=argparse.SUPPRESS, help=o.describe().replace("%", "%%"), dest=o.name)
        t = o.base
        origin = getattr(t, "__origin__", None)
        if t is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, **kw)
        elif o.parse is not None:  # converted in _config, so a bad value is an error message, not a usage dump
            parser.add_argument(flag, action="append", metavar=o.metavar or "VALUE", **kw)
        elif origin is list:
            item = t.__args__[0]
            parser.add_argument(flag, type=_flag_type(item, o), nargs="*" if item is str else "+",
                                metavar=o.metavar or name.upper(), **kw)
        elif origin is dict:
            parser.add_argument(flag, type=_key_value, action="append", metavar=o.metavar or "KEY=VALUE", **kw)
        else:
            parser.add_argument(flag, type=_flag_type(t, o), metavar=o.metavar or name.upper(), **kw)


def _flag_type(t: type, o: Option):
    def convert(text: str):
        try:
            return coerce_value(t, text, o.name, text=True)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
    convert.__name__ = getattr(t, "__name__", "value")
    return convert


def _given(args: argparse.Namespace) -> dict:
    """The config values given as flags, nested by their dotted dest, KEY=VALUE lists turned into dicts."""
    values: dict = {}
    for dest, value in vars(args).items():
        if dest in ("command", "func", "tagger_command", "pipeline_command") or dest.startswith("_"):
            continue
        if isinstance(value, list) and value and isinstance(value[0], tuple):
            value = dict(value)
        *outer, name = dest.split(".")
        node = values
        for part in outer:
            node = node.setdefault(part, {})
        node[name] = value
    return values


def config_from_args(cls: type, args: argparse.Namespace, base: dict | None = None):
    """defaults < --config file (or ``base``) < flags, as a ``cls`` instance."""
    fields = {o.name.split(".")[0] for o in options(cls)}
    config = getattr(args, "config", None)
    values = dict(base) if base is not None else (load_config_file(config) if config else {})
    given = _given(args)
    for o in options(cls):
        if o.parse is not None and isinstance(given.get(o.name), list):
            items = [v for v in map(o.parse, given[o.name]) if v is not None]
            given[o.name] = dict(items) if dict in (o.base, getattr(o.base, "__origin__", None)) else items
    for key, value in given.items():
        if key not in fields:
            continue
        if isinstance(value, dict) and isinstance(values.get(key), dict):
            value = {**values[key], **value}
        values[key] = value
    return cls.from_dict(values)


def _key_value(text: str) -> tuple[str, str]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE (e.g. NEW=OLD), got {text!r}")
    k, v = text.split("=", 1)
    return k.strip(), v.strip()


def _train_config(args: argparse.Namespace):
    """(config, data, out, init model) of ``animegen train``: options as for every stage (a --resume builds on
    the run's saved config.json); --data / --out / --init-from from the flags, else a --config file's keys, else
    (for --resume) what the run recorded, else the defaults."""
    from animegen.train.config import TrainConfig
    from animegen.utils import read_json

    file = load_config_file(args.config) if args.config else {}
    out = Path(args.out or file.get("out") or "runs/train")
    if args.resume:
        saved = out / "config.json"
        if not saved.exists():
            raise FileNotFoundError(f"--resume: {saved} not found; give the --out of the run to continue")
        base = json.loads(saved.read_text())
        recorded = {**base, **read_json(out / "inputs.json", {})}  # older runs kept their data in config.json
        data = args.data or recorded.get("data") or "synthetic:"
        return config_from_args(TrainConfig, args, base=base), data, out, None
    data = args.data or file.get("data") or "synthetic:"
    return config_from_args(TrainConfig, args), data, out, args.init_from or file.get("init_from")


def cmd_train(args: argparse.Namespace) -> int:
    from animegen.train.launch import train_processes
    from animegen.train.transfer import inherit_architecture

    cfg, data, out, init_model = _train_config(args)
    given = set(_given(args)) | set(load_config_file(args.config) if args.config else {})  # kept over the source's
    if args.print_config:
        cfg = inherit_architecture(cfg, init_model, keep=given) if init_model else cfg
        print(json.dumps(cfg.with_arch_defaults().to_dict(), indent=2))
        return 0
    nproc = 1 if "WORLD_SIZE" in os.environ else args.nproc  # already a rank of a torchrun job: train
    train_processes(cfg, data, out, resume=args.resume, nproc=nproc, init_model=init_model, keep=given)
    return 0


def cmd_ingest(args: argparse.Namespace) -> int:
    from animegen.data.ingest import IngestConfig, run_ingest

    out = run_ingest(config_from_args(IngestConfig, args), args.source, args.out, overwrite=args.overwrite,
                     progress=args._progress)
    print(f"dataset written to {out}")
    return 0


def cmd_label(args: argparse.Namespace) -> int:
    from animegen.labels.label import LabelConfig, run_label

    out = run_label(config_from_args(LabelConfig, args), args.dataset, args.out)
    print(f"labelled dataset written to {out}")
    return 0


def cmd_tagger_train(args: argparse.Namespace) -> int:
    from animegen.labels.colour_train import TaggerTrainConfig, run_tagger_train

    metrics = run_tagger_train(config_from_args(TaggerTrainConfig, args), args.data, args.out)
    acc = {k: metrics.get(f"{k}_accuracy") for k in ("hair", "eye")}
    print(f"tagger written to {args.out}; held-out accuracy: "
          + ", ".join(f"{k} {v:.1%}" if v is not None else f"{k} n/a" for k, v in acc.items()))
    return 0


def cmd_tagger_predict(args: argparse.Namespace) -> int:
    from animegen.labels.colour import TaggerPredictConfig, run_tagger_predict

    path = run_tagger_predict(config_from_args(TaggerPredictConfig, args), args.model, args.data, args.out)
    print(f"probability table written: {path}")
    return 0


def cmd_cluster(args: argparse.Namespace) -> int:
    from animegen.labels.cluster import ClusterConfig, run_cluster

    summary = run_cluster(config_from_args(ClusterConfig, args), args.data, args.out)
    print(f"clusters written to {args.out} (chosen K = {summary.get('chosen_k')})")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from animegen.eval.evaluate import EvalConfig, run_evaluate

    out = run_evaluate(config_from_args(EvalConfig, args), args.model, args.data, args.out)
    m = json.loads((Path(out) / "metrics.json").read_text())
    print(f"FID {m.get('fid')} (psi 1), {m.get('fid_psi')} (psi {m.get('psi')}); report: {Path(out) / 'report.html'}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from animegen.eval.compare import CompareConfig, run_compare

    out = run_compare(config_from_args(CompareConfig, args), args.sources, args.out)
    print((Path(out) / "compare.txt").read_text(), end="")
    return 0


def cmd_fid(args: argparse.Namespace) -> int:
    from animegen.eval.evaluate import FidConfig, run_fid

    path = run_fid(config_from_args(FidConfig, args), args.a, args.b, args.out)
    print(Path(path).read_text(), end="")
    return 0


def _generator(args: argparse.Namespace):
    from animegen.train.checkpoint import load_generator
    from animegen.utils import resolve_device

    device = resolve_device(args.device)
    G, meta = load_generator(args.model, device)
    return G, meta["class_names"], device


def cmd_sample(args: argparse.Namespace) -> int:
    from animegen.latent import sample

    if args.recipe:
        return _sample_recipe(args)
    G, names, device = _generator(args)
    classes = None if args.classes is None else args.classes
    paths = sample(G, names, args.out, n=args.n, truncation_psi=args.psi, classes=classes, seed=args.seed,
                   device=device)
    print(f"wrote {len(paths['images'])} images and {paths['grid']} under {args.out}")
    return 0


def _sample_recipe(args: argparse.Namespace) -> int:
    """``animegen sample MODEL --recipe FILE``: the studio's face of that recipe (a recipe JSON, or a PNG the studio
    wrote, whose text chunk holds it), bit for bit on the same device and dtype."""
    from animegen.studio.engine import Recipe, load_model, render
    from animegen.studio.server import png_bytes
    from animegen.utils import atomic_write_text, resolve_device

    recipe = Recipe.read(args.recipe)
    model = load_model(recipe.model, args.model, resolve_device(args.device))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    target = out / f"{Path(args.recipe).stem}.png"
    target.write_bytes(png_bytes(render(model, recipe), recipe))
    atomic_write_text(target.with_suffix(".json"), json.dumps(recipe.to_dict(), indent=2) + "\n")
    print(f"wrote {target} (and its recipe, {target.with_suffix('.json').name})")
    return 0


def cmd_studio(args: argparse.Namespace) -> int:
    import uvicorn

    from animegen.studio.models import load_models
    from animegen.studio.server import create_app
    from animegen.utils import resolve_device

    models = load_models(args.sources, registry=args.registry, device=str(resolve_device(args.device)))
    print(f"studio: {len(models)} model(s): {', '.join(models)}; open http://{args.host}:{args.port}/", flush=True)
    uvicorn.run(create_app(models, max_concurrent=args.max_concurrent), host=args.host, port=args.port,
                log_level="warning")
    return 0


def cmd_interpolate(args: argparse.Namespace) -> int:
    from animegen.latent import interpolate

    G, names, device = _generator(args)
    interpolate(G, names, args.out, method=args.method, space=args.space, n_keys=args.keys, steps=args.steps,
                truncation_psi=args.psi, class_name=args.class_name, seed=args.seed, fps=args.fps, rows=args.rows,
                device=device)
    print(f"wrote {Path(args.out) / 'interp.png'} and {Path(args.out) / 'interp.gif'}")
    return 0


def cmd_mix(args: argparse.Namespace) -> int:
    from animegen.latent import mix

    G, names, device = _generator(args)
    mix(G, names, args.out, n_rows=args.rows, n_cols=args.cols, truncation_psi=args.psi,
        class_name=args.class_name, seed=args.seed, device=device)
    print(f"wrote style-mixing grids to {args.out}")
    return 0


def cmd_truncate(args: argparse.Namespace) -> int:
    from animegen.latent import truncate

    G, names, device = _generator(args)
    truncate(G, names, args.out, psis=tuple(args.psis), n=args.n, class_name=args.class_name, seed=args.seed,
             device=device)
    print(f"wrote {Path(args.out) / 'truncation.png'}")
    return 0


def _stage_parser(sub, name: str, cls: type, func, help: str, description: str, *,
                  inputs: tuple[tuple[str, str], ...] = (), data: str | None = None,
                  out: str | None = "output directory", skip: tuple[str, ...] = ()) -> argparse.ArgumentParser:
    """The parser of one stage command: its inputs (positional; 'NAME+' for one or more), --data, --out, --config
    and one flag per option of the stage's Config ``cls``."""
    p = sub.add_parser(name, help=help, description=description)
    for arg, text in inputs:
        p.add_argument(arg.rstrip("+"), help=text, **({"nargs": "+"} if arg.endswith("+") else {}))
    if data:
        p.add_argument("--data", required=True, help=data)
    if out:
        p.add_argument("--out", required=True, help=out)
    p.add_argument("--config", help=f"YAML or JSON file of {cls.__name__} options (keys as the flags, without "
                                    "dashes); flags given win")
    add_config_options(p, cls, skip=skip)
    p.set_defaults(func=func)
    return p


def build_parser() -> argparse.ArgumentParser:
    from animegen.data.ingest import IngestConfig
    from animegen.eval.compare import CompareConfig
    from animegen.eval.evaluate import EvalConfig, FidConfig
    from animegen.labels.cluster import ClusterConfig
    from animegen.labels.colour import TaggerPredictConfig
    from animegen.labels.colour_train import TaggerTrainConfig
    from animegen.labels.label import LabelConfig
    from animegen.pipelines.cli import add_pipeline_parser
    from animegen.train.config import TrainConfig

    parser = argparse.ArgumentParser(prog="animegen", description="Train, fine-tune, sample and evaluate "
                                     "anime-face GANs (DCGAN, StyleGAN, conditional).")
    parser.add_argument("--version", action="version", version=f"animegen {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = _stage_parser(sub, "train", TrainConfig, cmd_train, "train a model (or fine-tune one with --init-from)",
                      "Train a GAN. Options come from --config (YAML/JSON) and are overridden by flags; the "
                      "resolved config is saved as OUT/config.json.", out=None)
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint.pt "
                   "(exactly: weights, optimisers, counters, RNG states); --kimg may extend it")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    p.add_argument("--nproc", type=int, default=1, metavar="N", help="data-parallel processes on this machine "
                   "(torchrun; one per GPU, or gloo on the CPU); --batch is the global batch, split among them")
    p.add_argument("--data", help="training data: synthetic:[?n=&seed=&hair=&eyes=&labels=], a packed Dataset "
                   "directory, or an image folder (default: synthetic:; on --resume, the run's recorded data)")
    p.add_argument("--out", help="output Model directory: config.json, inputs.json, checkpoint.pt, train_log.jsonl, "
                   "loss.png, samples/ (default: runs/train)")
    p.add_argument("--init-from", metavar="MODEL", help="start from another Model (directory or checkpoint.pt): "
                   "transfer learning; the architecture options come from that model")

    p = _stage_parser(sub, "ingest", IngestConfig, cmd_ingest,
                      "download, validate and pack a source of images into a Dataset directory",
                      "Ingest SOURCE (a folder, .zip/.tar/.tar.gz, https://, s3://bucket/key or s3://bucket/prefix/, "
                      "kaggle:OWNER/DATASET, synthetic:) into the Dataset artifact: images.npy, index.jsonl, "
                      "manifest.json (every skip with its reason).",
                      inputs=(("source", "the source URI"),), out="output Dataset directory")
    p.add_argument("--overwrite", action="store_true", help="replace an existing Dataset in --out")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True, dest="_progress",
                   help="show a progress bar")
    _stage_parser(sub, "label", LabelConfig, cmd_label, "tags -> hair/eye classes: write a Labelled Dataset",
                  "Label a Dataset: tags from its tags/ file, a CSV, a probability table, the index (synthetic:) or "
                  "the Danbooru ResNet tagger (danbooru:WEIGHTS_URI), then the class rules of the conditional "
                  "StyleGAN paper (under 'rules:' in a --config file).",
                  inputs=(("dataset", "a Dataset directory (from animegen ingest)"),),
                  out="output Labelled Dataset directory")

    p = sub.add_parser("tagger", help="the hair/eye colour tagger: train it, or predict a probability table",
                       description="A small CNN that predicts hair and eye colour. It labels untagged sets and "
                                   "scores whether generated images show the requested colours.")
    tsub = p.add_subparsers(dest="tagger_command", required=True, metavar="ACTION")
    _stage_parser(tsub, "train", TaggerTrainConfig, cmd_tagger_train,
                  "train on a labelled dataset (held-out accuracy per colour in metrics.json)",
                  "Train the colour tagger on a labelled dataset.",
                  data="a labelled dataset (Labelled Dataset dir, or synthetic:)",
                  out="output directory (colour_tagger.pt, metrics.json, confusions)")
    _stage_parser(tsub, "predict", TaggerPredictConfig, cmd_tagger_predict,
                  "write colour_probs.csv for a dataset (a tag source for `animegen label`)",
                  "Tag a dataset with the colour tagger: a probability table for `animegen label`.",
                  inputs=(("model", "a tagger directory (or its colour_tagger.pt)"),), data="the Dataset to tag")
    _stage_parser(sub, "cluster", ClusterConfig, cmd_cluster,
                  "embedding clustering (k-means, K = 3..9, silhouette) as class labels",
                  "Cluster a dataset's embeddings (Danbooru/torchvision ResNet50 weights when given, else the colour "
                  "tagger's features) with k-means over a range of K; write silhouette scores, a grid per cluster "
                  "and a Labelled Dataset.", data="the Dataset to cluster")
    _stage_parser(sub, "evaluate", EvalConfig, cmd_evaluate,
                  "FID, KID, per-class accuracy, grids and report.html for a model",
                  "Evaluate a Model against a Dataset: FID and KID at psi 1 and --psi, per-class hair/eye accuracy "
                  "with the colour tagger, sample/truncation/mixing grids, a looping interpolation GIF; "
                  "metrics.json and a self-contained report.html.",
                  inputs=(("model", "a Model directory (or checkpoint.pt, or snapshots/G_ema-*.pt)"),),
                  data="the reference Dataset (FID statistics are cached per dataset)",
                  out="output Evaluation directory")
    _stage_parser(sub, "compare", CompareConfig, cmd_compare,
                  "one table and plots of FID, KID, accuracy, time and memory across runs",
                  "Tabulate evaluations from local folders (searched recursively) or a run registry "
                  "(s3://bucket/runs/): compare.txt/csv/json/html, fid.png, fid_over_kimg.png.",
                  inputs=(("sources+", "evaluation folders, folders holding them, or s3://.../runs/"),))
    _stage_parser(sub, "fid", FidConfig, cmd_fid, "FID and KID between two datasets or image folders (cross-dataset)",
                  "FID and KID between any two image sources: Dataset directories, image folders, synthetic:. A "
                  "folder is scored at its most common image size; files of another size (e.g. the grid.png of "
                  "`animegen sample`) are skipped with a warning, a folder with no majority size is refused. "
                  "Writes fid.json.", inputs=(("a", "first dataset or folder"), ("b", "second dataset or folder")))

    def latent_parser(name: str, help_text: str, func):
        q = sub.add_parser(name, help=help_text, description=help_text)
        q.add_argument("model", help="a Model directory (or its checkpoint.pt)")
        q.add_argument("--out", required=True, help="output directory")
        q.add_argument("--seed", type=int, default=0, help="seed of the latents")
        q.add_argument("--psi", type=float, default=1.0, help="truncation psi (1 = none)")
        q.add_argument("--device", default="auto", help="auto, cpu or cuda")
        q.set_defaults(func=func)
        return q

    q = latent_parser("sample", "sample N images (per class when conditional) as PNG files and a grid", cmd_sample)
    q.add_argument("--n", type=int, default=64, help="images (per class when conditional)")
    q.add_argument("--classes", nargs="*", help="class names (default: all); '+' joins tags of a multi-hot model")
    q.add_argument("--recipe", metavar="FILE", help="draw one face from a studio recipe (its JSON, or a PNG the "
                   "studio wrote): the same image bit for bit on the same device and dtype; the other sampling "
                   "options are ignored")
    q = latent_parser("interpolate", "latent interpolation as a grid PNG and a looping GIF", cmd_interpolate)
    q.add_argument("--method", choices=("linear", "slerp", "circular"), default="slerp")
    q.add_argument("--space", choices=("z", "w"), default="z", help="w: StyleGAN's intermediate latent space")
    q.add_argument("--keys", type=int, default=4, help="key latents per sequence")
    q.add_argument("--steps", type=int, default=16, help="frames between two keys")
    q.add_argument("--rows", type=int, default=4, help="independent sequences")
    q.add_argument("--fps", type=float, default=12.0)
    q.add_argument("--class", dest="class_name", help="class to draw (conditional models)")
    q = latent_parser("mix", "style mixing: coarse / middle / fine crossover grids (StyleGAN)", cmd_mix)
    q.add_argument("--rows", type=int, default=4)
    q.add_argument("--cols", type=int, default=4)
    q.add_argument("--class", dest="class_name", help="class to draw (conditional models)")
    q = latent_parser("truncate", "truncation grid: one column per psi around the tracked mean w", cmd_truncate)
    q.add_argument("--psis", type=float, nargs="+", default=[2, 1, 0.6, 0, -0.6, -1, -2])
    q.add_argument("--n", type=int, default=8, help="rows (latents)")
    q.add_argument("--class", dest="class_name", help="class to draw (conditional models)")
    q = sub.add_parser("studio", help="an interactive page and HTTP API to generate faces from trained models",
                       description="Serve a page and a JSON API (OpenAPI at /openapi.json, /docs) over the models: "
                       "Model folders, a pipeline run's folder (every model it trained), s3:// Model artifacts, or "
                       "run:RUN_ID with --registry (every model of that run).")
    q.add_argument("sources", nargs="+", metavar="MODEL", help="Model folder, pipeline run folder, s3:// URI or "
                   "run:RUN_ID")
    q.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    q.add_argument("--port", type=int, default=8000)
    q.add_argument("--registry", default="", help="the run registry's URI, for run:RUN_ID")
    q.add_argument("--device", default="auto", help="auto, cpu or cuda")
    q.add_argument("--max-concurrent", type=int, default=2, help="generations at once (others wait, then 503)")
    q.set_defaults(func=cmd_studio)
    add_pipeline_parser(sub)
    from animegen.images import add_images_parser

    add_images_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, FileExistsError, RuntimeError) as e:
        sub = next((getattr(args, d) for d in ("pipeline_command", "tagger_command", "images_command")
                    if getattr(args, d, None)), None)
        print(f"animegen {args.command}{' ' + sub if sub else ''}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

"""`animegen <command>`: the command line over the library's stage functions."""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import types
import typing
from pathlib import Path

from . import __version__
from .config import Config, load_config_file

TRAIN_HELP = {
    "data": "training data: synthetic:[?n=&seed=&hair=&eyes=&labels=], a packed Dataset directory, or an image folder",
    "out": "output Model directory (config.json, checkpoint.pt, train_log.jsonl, loss.png, samples/)",
    "resolution": "image size in pixels (power of two: 64, 128, 256)",
    "conditional": "condition G and D on the dataset's classes (one-hot or multi-hot)",
    "arch": "dcgan or stylegan",
    "cond_mode": "concat: class vector into G's input and D's input channels; projection: learned class "
                 "embedding in G, projection term in D",
    "z_dim": "latent size (default 100 for dcgan, 512 for stylegan)",
    "w_dim": "StyleGAN w size",
    "mapping_layers": "StyleGAN mapping network depth",
    "channel_base": "feature maps at resolution r = min(channel_max, channel_base / r) (2048 dcgan, 4096 stylegan)",
    "channel_max": "cap on feature maps per layer",
    "kimg": "training length in thousands of real images shown to D",
    "epochs": "training length in passes over the dataset (when --kimg is not given)",
    "batch": "batch size (128 dcgan, 64 stylegan)",
    "lr_g": "generator learning rate (2e-4 dcgan, 1e-3 stylegan)",
    "lr_d": "discriminator learning rate",
    "betas": "Adam betas (0.5 0.999 dcgan, 0 0.99 stylegan)",
    "loss": "bce (non-saturating logistic) or hinge",
    "real_label": "real targets drawn from U[LO, HI] (label smoothing; 0.9 1.0 dcgan, 1 1 stylegan)",
    "r1_gamma": "R1 penalty weight (0 turns it off; 10 for stylegan)",
    "r1_interval": "apply R1 every N steps (lazy regularisation)",
    "pl_weight": "path-length regularisation weight (stylegan; 0 turns it off)",
    "pl_interval": "apply path-length regularisation every N steps",
    "pl_decay": "decay of the path-length running mean",
    "style_mixing": "probability of style-mixing regularisation (stylegan)",
    "ema_kimg": "half-life of G_ema in kimg (0: G_ema is a copy of G)",
    "xflip": "random horizontal flips (p 0.5) of the real images, on the device",
    "seed": "seed for initialisation, data order and latents",
    "device": "auto, cpu or cuda",
    "amp": "mixed precision: auto (bf16 autocast and channels_last on CUDA only), on (on any device, CPU "
           "included), off (float32 everywhere) (default: auto)",
    "snapshot_kimg": "write a checkpoint and a sample grid every N kimg",
    "log_every": "steps between train_log.jsonl lines",
    "grid_size": "columns of the sample grids (and rows when unconditional)",
    "progress": "show a progress bar",
    "init_from": "start from another Model's weights (directory or checkpoint.pt): transfer learning",
    "class_map": "NEW=OLD: new class NEW starts from old class OLD (repeatable); same names map by themselves",
    "init_class": "old class that every unmapped new class starts from (or, for an unconditional target, the "
                  "class folded into it); default: the mean of the old classes",
    "freeze_d": "freeze the first K discriminator blocks (from the input side)",
}


def _add_config_options(parser: argparse.ArgumentParser, cls, helps: dict[str, str] | None = None,
                        skip: tuple[str, ...] = (), prefix: str = "") -> None:
    """One --flag per field of a Config dataclass (nested configs flattened; their dest is 'outer.inner').

    Defaults are SUPPRESSed so that only flags actually given override a --config file."""
    helps = helps or {}
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        t = hints[f.name]
        if typing.get_origin(t) in (typing.Union, types.UnionType):  # X | None -> X
            t = next(a for a in typing.get_args(t) if a is not type(None))
        if isinstance(t, type) and issubclass(t, Config):
            _add_config_options(parser, t, helps, prefix=f"{prefix}{f.name}.")
            continue
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None)  # type: ignore[misc]
        text = helps.get(f.name, "")
        text = text if "default" in text else (f"{text} (default: {default})" if text else f"default: {default}")
        flag = "--" + f.name.replace("_", "-")
        kw = dict(default=argparse.SUPPRESS, help=text.replace("%", "%%"), dest=prefix + f.name)
        origin, args = typing.get_origin(t), typing.get_args(t)
        if t is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, **kw)
        elif origin is list:
            item = args[0] if args else str
            parser.add_argument(flag, type=item, nargs="*" if item is str else "+", metavar=f.name.upper(), **kw)
        elif origin is dict:
            parser.add_argument(flag, type=_key_value, action="append", metavar="KEY=VALUE", **kw)
        else:
            parser.add_argument(flag, type=t, **kw)


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


def _config(cls, args: argparse.Namespace, base: dict | None = None):
    """defaults < --config file (or ``base``) < flags, as a ``cls`` instance."""
    fields = {f.name for f in dataclasses.fields(cls)}
    values = dict(base) if base is not None else (load_config_file(args.config) if args.config else {})
    for key, value in _given(args).items():
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
    from .train.config import TrainConfig

    if not args.resume:
        return _config(TrainConfig, args)
    out = Path(getattr(args, "out", None) or TrainConfig.out)
    saved = out / "config.json"
    if not saved.exists():
        raise FileNotFoundError(f"--resume: {saved} not found; give the --out of the run to continue")
    return _config(TrainConfig, args, base=json.loads(saved.read_text()))


def cmd_train(args: argparse.Namespace) -> int:
    from .train import train

    cfg = _train_config(args)
    if args.print_config:
        print(json.dumps(cfg.with_arch_defaults().to_dict(), indent=2))
        return 0
    train(cfg, resume=args.resume)
    return 0


def cmd_ingest(args: argparse.Namespace) -> int:
    from .data.ingest import IngestConfig, run_ingest

    base = load_config_file(args.config) if args.config else {}
    cfg = _config(IngestConfig, args, base={**base, "source": args.source})
    out = run_ingest(cfg, args.out, overwrite=args.overwrite, progress=args._progress)
    print(f"dataset written to {out}")
    return 0


def cmd_label(args: argparse.Namespace) -> int:
    from .labels.label import LabelConfig, run_label

    out = run_label(_config(LabelConfig, args), args.dataset, args.out)
    print(f"labelled dataset written to {out}")
    return 0


def cmd_tagger_train(args: argparse.Namespace) -> int:
    from .labels.colour import TaggerTrainConfig, run_tagger_train

    metrics = run_tagger_train(_config(TaggerTrainConfig, args), args.data, args.out)
    acc = {k: metrics.get(f"{k}_accuracy") for k in ("hair", "eye")}
    print(f"tagger written to {args.out}; held-out accuracy: "
          + ", ".join(f"{k} {v:.1%}" if v is not None else f"{k} n/a" for k, v in acc.items()))
    return 0


def cmd_tagger_predict(args: argparse.Namespace) -> int:
    from .labels.colour import TaggerPredictConfig, run_tagger_predict

    path = run_tagger_predict(_config(TaggerPredictConfig, args), args.model, args.data, args.out)
    print(f"probability table written: {path}")
    return 0


def cmd_cluster(args: argparse.Namespace) -> int:
    from .labels.cluster import ClusterConfig, run_cluster

    summary = run_cluster(_config(ClusterConfig, args), args.data, args.out)
    print(f"clusters written to {args.out} (chosen K = {summary.get('chosen_k')})")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .eval.evaluate import EvalConfig, run_evaluate

    out = run_evaluate(_config(EvalConfig, args), args.model, args.data, args.out)
    m = json.loads((Path(out) / "metrics.json").read_text())
    print(f"FID {m.get('fid')} (psi 1), {m.get('fid_psi')} (psi {m.get('psi')}); report: {Path(out) / 'report.html'}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from .eval.compare import CompareConfig, run_compare

    out = run_compare(args.sources, args.out, _config(CompareConfig, args))
    print((Path(out) / "compare.txt").read_text(), end="")
    return 0


def cmd_fid(args: argparse.Namespace) -> int:
    from .eval.evaluate import FidConfig, run_fid

    path = run_fid(args.a, args.b, args.out, _config(FidConfig, args))
    print(Path(path).read_text(), end="")
    return 0


def _generator(args: argparse.Namespace):
    from .train.checkpoint import load_generator
    from .utils import resolve_device

    device = resolve_device(args.device)
    G, meta = load_generator(args.model, device)
    return G, meta["class_names"], device


def cmd_sample(args: argparse.Namespace) -> int:
    from .latent import sample

    G, names, device = _generator(args)
    classes = None if args.classes is None else args.classes
    paths = sample(G, names, args.out, n=args.n, truncation_psi=args.psi, classes=classes, seed=args.seed,
                   device=device)
    print(f"wrote {len(paths['images'])} images and {paths['grid']} under {args.out}")
    return 0


def cmd_interpolate(args: argparse.Namespace) -> int:
    from .latent import interpolate

    G, names, device = _generator(args)
    interpolate(G, names, args.out, method=args.method, space=args.space, n_keys=args.keys, steps=args.steps,
                truncation_psi=args.psi, class_name=args.class_name, seed=args.seed, fps=args.fps, rows=args.rows,
                device=device)
    print(f"wrote {Path(args.out) / 'interp.png'} and {Path(args.out) / 'interp.gif'}")
    return 0


def cmd_mix(args: argparse.Namespace) -> int:
    from .latent import mix

    G, names, device = _generator(args)
    mix(G, names, args.out, n_rows=args.rows, n_cols=args.cols, truncation_psi=args.psi,
        class_name=args.class_name, seed=args.seed, device=device)
    print(f"wrote style-mixing grids to {args.out}")
    return 0


def cmd_truncate(args: argparse.Namespace) -> int:
    from .latent import truncate

    G, names, device = _generator(args)
    truncate(G, names, args.out, psis=tuple(args.psis), n=args.n, class_name=args.class_name, seed=args.seed,
             device=device)
    print(f"wrote {Path(args.out) / 'truncation.png'}")
    return 0


# ------------------------------------------------------------------------------------------------ pipeline
def _param_value(key: str, text: str):
    """A --param value converted to the pipeline parameter's type (bool: true/false/1/0/yes/no; dict: JSON)."""
    from .pipelines.pipeline import PARAMETERS

    if key not in PARAMETERS:
        raise ValueError(f"--param {key}: no such pipeline parameter; `animegen pipeline params` lists them")
    want = PARAMETERS[key].type
    try:
        if want is bool:
            low = text.strip().lower()
            if low not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError("expected true or false")
            return low in ("true", "1", "yes")
        if want is dict:
            value = json.loads(text)
            if not isinstance(value, dict):
                raise ValueError("expected a JSON object")
            return value
        return want(text)
    except ValueError as e:
        raise ValueError(f"--param {key}={text!r}: {e} ({want.__name__} parameter)") from None


def _pipeline_params(args: argparse.Namespace) -> dict:
    """--params FILE (YAML/JSON mapping) < --param KEY=VALUE, as typed values (only those given)."""
    from .pipelines.pipeline import check_params

    values = load_config_file(args.params) if args.params else {}
    for key, text in args.param or []:
        values[key.replace("-", "_")] = _param_value(key.replace("-", "_"), text)
    check_params(values)  # refuses unknown names and wrong types early
    return values


def _pipeline_options(args: argparse.Namespace):
    from .pipelines.pipeline import PipelineOptions, parse_toleration

    o = PipelineOptions()
    if args.gpu_node_selector is not None:
        given = [s for s in args.gpu_node_selector if s.lower() != "none"]
        for item in given:
            if "=" not in item:
                raise ValueError(f"--gpu-node-selector {item!r}: expected KEY=VALUE (or none)")
        o.gpu_node_selector = dict(item.split("=", 1) for item in given)
    if args.gpu_toleration is not None:
        o.gpu_tolerations = [parse_toleration(t) for t in args.gpu_toleration if t.lower() != "none"]
    for name in ("accelerator", "gpus", "gpu_cpu", "gpu_memory", "cpu_cpu", "cpu_memory", "object_store_secret",
                 "kaggle_secret", "retries"):
        if getattr(args, name) is not None:
            setattr(o, name, getattr(args, name))
    if o.gpus < 1:
        raise ValueError("--gpus must be >= 1")
    return o


def _rerun_variant(args: argparse.Namespace, given: dict) -> dict:
    """make_pipeline keyword arguments for --only/--from-run/--registry on compile and submit (a rerun that imports
    the other tasks' artifacts of a registry run), or for plain defaults."""
    from .pipelines.local import record_from_registry, rerun_plan
    from .pipelines.pipeline import check_params

    if not args.only:
        if args.from_run or args.registry:
            raise ValueError("--from-run / --registry go with --only STAGE")
        return {"defaults": given}
    if not (args.from_run and args.registry):
        raise ValueError("--only on compile/submit needs --from-run RUN_ID and --registry URI (the run registry "
                         "that run's report wrote, e.g. s3://BUCKET/runs/); locally use `pipeline run --local`")
    prior = record_from_registry(args.registry, args.from_run)
    values = check_params(given)
    rerun = rerun_plan(args.only, values)
    reuse = {t: outs for t, outs in prior["tasks"].items() if t not in rerun}
    return {"static": values, "rerun": rerun, "reuse": reuse, "source": f"registry run {args.from_run}"}


def cmd_pipeline_run(args: argparse.Namespace) -> int:
    if not args.local:
        raise ValueError("only --local runs here (kfp.local); to run on a cluster use `animegen pipeline submit "
                         "--host URL` (or upload the YAML of `animegen pipeline compile`)")
    from .pipelines.local import run_local

    given = _pipeline_params(args)  # (placement options mean nothing to kfp.local: compile and submit take them)
    run = run_local(given, args.pipeline_root, only=args.only, from_run=args.from_run, registry=args.registry,
                    threads=args.threads)
    rec = run.record
    if rec.get("reused"):
        print(f"reused from {args.from_run}: {', '.join(rec['reused'])}; reran: {', '.join(rec['rerun'])}")
    print(f"run {run.run_id} {rec['status']} in {rec['wall_s']:.0f} s; artifacts: {run.run_dir}")
    print(f"report: {run.report}")
    return 0


def cmd_pipeline_compile(args: argparse.Namespace) -> int:
    from .pipelines.pipeline import compile_pipeline

    variant = _rerun_variant(args, _pipeline_params(args))
    path = compile_pipeline(args.out, _pipeline_options(args), **variant)
    what = f"a rerun of {', '.join(sorted(variant['rerun']))}" if "rerun" in variant else "the pipeline"
    print(f"wrote {path} ({what}); upload it in the KFP UI or run `animegen pipeline submit`")
    return 0


def cmd_pipeline_submit(args: argparse.Namespace) -> int:
    import tempfile

    from .pipelines.pipeline import compile_pipeline

    given = _pipeline_params(args)
    variant = _rerun_variant(args, given)
    options = _pipeline_options(args)
    import kfp

    with tempfile.TemporaryDirectory(prefix="animegen-submit-") as tmp:
        path = compile_pipeline(Path(tmp) / "animegen_pipeline.yaml", options, **variant)
        try:
            client = kfp.Client(host=args.host, namespace=args.namespace, existing_token=args.token)
            result = client.create_run_from_pipeline_package(
                str(path), arguments=given, run_name=args.run_name, experiment_name=args.experiment,
                namespace=args.namespace, enable_caching=None if args.cache is None else args.cache)
        except Exception as e:  # noqa: BLE001 - urllib3/kfp_server_api raise many kinds; name the host
            reason = getattr(e, "reason", None) or e
            raise RuntimeError(f"cannot submit to KFP at {args.host}: {type(e).__name__}: {reason}. Check --host "
                               "(the KFP API or UI URL, e.g. http://localhost:8080 after `kubectl port-forward -n "
                               "kubeflow svc/ml-pipeline-ui 8080:80`) and that the server is up") from None
    print(f"submitted run {result.run_id} to {args.host} (experiment {args.experiment})")
    return 0


def cmd_pipeline_params(args: argparse.Namespace) -> int:
    from .pipelines.pipeline import PARAMETERS

    for name, p in PARAMETERS.items():
        print(f"{name:24} {p.type.__name__:5} {json.dumps(p.default):>12}  {p.help}")
    return 0


def _add_pipeline_parser(sub) -> None:
    from .pipelines.local import DEFAULT_ROOT
    from .pipelines.pipeline import STAGES

    p = sub.add_parser("pipeline", help="the Kubeflow pipeline: run it locally, compile it, submit it",
                       description="The KFP v2 pipeline of both papers' experiments (every stage a component). "
                                   "`run --local` runs it here with kfp.local; `compile` writes the YAML to upload; "
                                   "`submit` sends it to a KFP endpoint; `params` lists its parameters.")
    psub = p.add_subparsers(dest="pipeline_command", required=True, metavar="ACTION")

    def params_args(q) -> None:
        q.add_argument("--param", action="append", type=_key_value, metavar="KEY=VALUE",
                       help="a pipeline parameter (repeatable; `animegen pipeline params` lists them)")
        q.add_argument("--params", metavar="FILE", help="YAML/JSON mapping of pipeline parameters "
                       "(e.g. configs/pipeline/mlds.yaml); --param wins")

    def gpu_args(q) -> None:
        g = q.add_argument_group("placement and secrets (GPU node pool of the train and transfer tasks: "
                                 "defaults for GKE)")
        g.add_argument("--gpu-node-selector", action="append", metavar="KEY=VALUE",
                       help="node label of the GPU pool (repeatable; default "
                            "cloud.google.com/gke-accelerator=nvidia-l4; EKS e.g. "
                            "eks.amazonaws.com/nodegroup=gpu; AKS e.g. agentpool=gpu; 'none' for no selector)")
        g.add_argument("--gpu-toleration", action="append", metavar="KEY[=VALUE]:EFFECT",
                       help="taint the GPU nodes carry (repeatable; default nvidia.com/gpu:NoSchedule, as GKE "
                            "and EKS GPU node groups set; AKS e.g. sku=gpu:NoSchedule; 'none' for no toleration)")
        g.add_argument("--accelerator", help="accelerator resource type (default nvidia.com/gpu)")
        g.add_argument("--gpus", type=int, help="GPUs per training task (default 1)")
        g.add_argument("--gpu-cpu", help="CPU request and limit of a training task (default 8)")
        g.add_argument("--gpu-memory", help="memory request and limit of a training task (default 32G)")
        g.add_argument("--cpu-cpu", help="CPU request of the other stages (default 2)")
        g.add_argument("--cpu-memory", help="memory request of the other stages (default 8G)")
        g.add_argument("--object-store-secret", help="secret with keys accesskey / secretkey for ingest and report "
                                                     "(default mlpipeline-minio-artifact)")
        g.add_argument("--kaggle-secret", help="secret with keys username / key for kaggle: sources, set as "
                                               "KAGGLE_USERNAME / KAGGLE_KEY in the ingest tasks (default: none)")
        g.add_argument("--retries", type=int, help="retries of a failed training task (default 2)")

    def rerun_args(q, local: bool) -> None:
        q.add_argument("--only", action="append", metavar="STAGE",
                       help=f"rerun only this stage ({', '.join(STAGES)}) or task (e.g. evaluate-manga), and what "
                            "it feeds; the other tasks' artifacts are reused from --from-run (repeatable)")
        q.add_argument("--from-run", metavar="RUN_ID", help="the run whose artifacts --only reuses" +
                       (" (a folder name under --pipeline-root)" if local else " (its registry id)"))
        q.add_argument("--registry", metavar="URI", help="read --from-run's artifacts from this run registry "
                       "(s3://BUCKET/runs/ or a folder)" + (" instead of its local record" if local else ""))

    q = psub.add_parser("run", help="run the pipeline on this machine (--local: kfp.local, no cluster)",
                        description="Run the whole DAG here with kfp.local (each stage a subprocess of this "
                                    "Python); prints where the report is. With --only STAGE --from-run RUN_ID, "
                                    "rerun that stage and everything downstream of it, importing the other stages' "
                                    "artifacts from that earlier run.")
    q.add_argument("--local", action="store_true", help="run with kfp.local (the only mode of `run`)")
    q.add_argument("--pipeline-root", default=DEFAULT_ROOT,
                   help=f"where runs and their artifacts go (default {DEFAULT_ROOT})")
    q.add_argument("--threads", type=int, metavar="N",
                   help="torch threads per stage (default: $OMP_NUM_THREADS, else 1, the fastest for the tiny "
                        "defaults; 0 = one per core, for real sizes)")
    params_args(q)
    rerun_args(q, local=True)
    q.set_defaults(func=cmd_pipeline_run)

    q = psub.add_parser("compile", help="write the pipeline YAML to upload in the KFP UI",
                        description="Compile the pipeline to the YAML users upload (Pipelines > Upload). GPU "
                                    "placement comes from the options below; --params/--param become the YAML's "
                                    "parameter defaults.")
    q.add_argument("--out", default="animegen_pipeline.yaml", help="output file (default animegen_pipeline.yaml)")
    params_args(q)
    rerun_args(q, local=False)
    gpu_args(q)
    q.set_defaults(func=cmd_pipeline_compile)

    q = psub.add_parser("submit", help="compile and submit a run to a KFP endpoint (kfp.Client)",
                        description="Compile the pipeline and start a run on a KFP v2 endpoint through kfp.Client, "
                                    "with the parameters given (the others keep their defaults).")
    q.add_argument("--host", required=True, help="KFP API endpoint, e.g. http://localhost:8080")
    q.add_argument("--experiment", default="animegen", help="experiment name (created if missing)")
    q.add_argument("--run-name", help="run name (default: kfp's, pipeline name + time)")
    q.add_argument("--namespace", help="Kubeflow profile namespace (multi-user installs)")
    q.add_argument("--token", help="bearer token (else kfp.Client's own credential lookup)")
    q.add_argument("--cache", action=argparse.BooleanOptionalAction, default=None,
                   help="force caching on or off for every task (default: each task's own setting)")
    params_args(q)
    rerun_args(q, local=False)
    gpu_args(q)
    q.set_defaults(func=cmd_pipeline_submit)

    q = psub.add_parser("params", help="list the pipeline's parameters with their defaults")
    q.set_defaults(func=cmd_pipeline_params)


INGEST_HELP = {
    "sha256": "expected sha256 of a downloaded or archive source",
    "resolution": "output size in pixels",
    "mode": "rgb, grayscale, or lineart (XDoG manga-like black and white)",
    "channels": "packed channels: 3 or 1 (default: 3 for rgb, 1 for grayscale/lineart); 3 with grayscale/lineart "
                "repeats the grey channel, so every layer of an RGB model transfers to the set",
    "fit": "center_crop or pad to a square",
    "filter": "resize filter: bilinear (DCGAN paper), lanczos, box, bicubic",
    "min_side": "skip images whose shorter side is below this",
    "max_pixels": "skip images with more pixels (decompression-bomb guard)",
    "dedupe": "drop exact duplicates (content sha256)",
    "holdout": "fraction of images in the held-out split",
    "split_block": "split by blocks of this many consecutive ids",
    "split_group": "split by this index field instead (whole groups on one side)",
    "grow_to": "grow a small set to this many images (rotation, zoom, crops; train split only)",
    "limit": "stop after this many images",
    "cache_dir": "download cache (default $ANIMEGEN_CACHE or ~/.cache/animegen)",
}
LABEL_HELP = {
    "tags": "auto | csv:PATH | tagfile:[NAME] | table:PATH | index | danbooru:WEIGHTS_URI",
    "join": "what tag ids match in the index: stem | id | source | row",
    "sha256": "expected sha256 of the danbooru: weights",
    "mode": "pair ((hair, eye) classes), hair, eye, or multi_hot",
    "threshold": "a tag counts when its probability is at least this",
    "require": "tags every kept image must have (default: solo 1girl age_rating_s where the source has them)",
    "exclude": "tags that drop an image",
    "hair": "hair-colour tags to keep",
    "eyes": "eye-colour tags to keep",
    "min_per_class": "drop classes with fewer images (reported)",
    "grid_k": "images per class in verification_grid.png",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="animegen", description="Train, fine-tune, sample and evaluate "
                                     "anime-face GANs (DCGAN, StyleGAN, conditional).")
    parser.add_argument("--version", action="version", version=f"animegen {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("train", help="train a model (or fine-tune one with --init-from)",
                       description="Train a GAN. Options come from --config (YAML/JSON) and are overridden by flags; "
                                   "the resolved config is saved as OUT/config.json.")
    p.add_argument("--config", help="YAML or JSON file of options (keys as the flags, without dashes)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint.pt "
                   "(exactly: weights, optimisers, counters, RNG states); --kimg may extend it")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    from .train.config import TrainConfig
    _add_config_options(p, TrainConfig, TRAIN_HELP)
    p.set_defaults(func=cmd_train)

    from .data.ingest import IngestConfig
    p = sub.add_parser("ingest", help="download, validate and pack a source of images into a Dataset directory",
                       description="Ingest SOURCE (a folder, .zip/.tar/.tar.gz, https://, s3://bucket/key or "
                                   "s3://bucket/prefix/, kaggle:OWNER/DATASET, synthetic:) into the Dataset artifact: "
                                   "images.npy, index.jsonl, manifest.json (every skip with its reason).")
    p.add_argument("source", help="the source URI")
    p.add_argument("--out", required=True, help="output Dataset directory")
    p.add_argument("--config", help="YAML or JSON file of ingest options")
    p.add_argument("--overwrite", action="store_true", help="replace an existing Dataset in --out")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True, dest="_progress",
                   help="show a progress bar")
    _add_config_options(p, IngestConfig, INGEST_HELP, skip=("source",))
    p.set_defaults(func=cmd_ingest)

    from .labels.label import LabelConfig
    p = sub.add_parser("label", help="tags -> hair/eye classes: write a Labelled Dataset",
                       description="Label a Dataset: tags from its tags/ file, a CSV, a probability table, the "
                                   "index (synthetic:) or the Danbooru ResNet tagger (danbooru:WEIGHTS_URI), then "
                                   "the class rules of the conditional StyleGAN paper.")
    p.add_argument("dataset", help="a Dataset directory (from animegen ingest)")
    p.add_argument("--out", required=True, help="output Labelled Dataset directory")
    p.add_argument("--config", help="YAML or JSON file of label options (class rules under 'rules:')")
    _add_config_options(p, LabelConfig, LABEL_HELP)
    p.set_defaults(func=cmd_label)

    from .labels.cluster import ClusterConfig
    from .labels.colour import TaggerPredictConfig, TaggerTrainConfig
    p = sub.add_parser("tagger", help="the hair/eye colour tagger: train it, or predict a probability table",
                       description="A small CNN that predicts hair and eye colour. It labels untagged sets and "
                                   "scores whether generated images show the requested colours.")
    tsub = p.add_subparsers(dest="tagger_command", required=True, metavar="ACTION")
    q = tsub.add_parser("train", help="train on a labelled dataset (held-out accuracy per colour in metrics.json)")
    q.add_argument("--data", required=True, help="a labelled dataset (Labelled Dataset dir, or synthetic:)")
    q.add_argument("--out", required=True, help="output directory (colour_tagger.pt, metrics.json, confusions)")
    q.add_argument("--config", help="YAML or JSON file of tagger options")
    _add_config_options(q, TaggerTrainConfig)
    q.set_defaults(func=cmd_tagger_train)
    q = tsub.add_parser("predict", help="write colour_probs.csv for a dataset (a tag source for `animegen label`)")
    q.add_argument("model", help="a tagger directory (or its colour_tagger.pt)")
    q.add_argument("--data", required=True, help="the Dataset to tag")
    q.add_argument("--out", required=True, help="output directory")
    q.add_argument("--config", help="YAML or JSON file of options")
    _add_config_options(q, TaggerPredictConfig)
    q.set_defaults(func=cmd_tagger_predict)

    p = sub.add_parser("cluster", help="embedding clustering (k-means, K = 3..9, silhouette) as class labels",
                       description="Cluster a dataset's embeddings (Danbooru/torchvision ResNet50 weights when "
                                   "given, else the colour tagger's features) with k-means over a range of K; "
                                   "write silhouette scores, a grid per cluster and a Labelled Dataset.")
    p.add_argument("--data", required=True, help="the Dataset to cluster")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--config", help="YAML or JSON file of options")
    _add_config_options(p, ClusterConfig)
    p.set_defaults(func=cmd_cluster)

    from .eval.compare import CompareConfig
    from .eval.evaluate import EvalConfig, FidConfig
    p = sub.add_parser("evaluate", help="FID, KID, per-class accuracy, grids and report.html for a model",
                       description="Evaluate a Model against a Dataset: FID and KID at psi 1 and --psi, per-class "
                                   "hair/eye accuracy with the colour tagger, sample/truncation/mixing grids, a "
                                   "looping interpolation GIF; metrics.json and a self-contained report.html.")
    p.add_argument("model", help="a Model directory (or checkpoint.pt, or snapshots/G_ema-*.pt)")
    p.add_argument("--data", required=True, help="the reference Dataset (FID statistics are cached per dataset)")
    p.add_argument("--out", required=True, help="output Evaluation directory")
    p.add_argument("--config", help="YAML or JSON file of evaluation options")
    _add_config_options(p, EvalConfig)
    p.set_defaults(func=cmd_evaluate)
    p = sub.add_parser("compare", help="one table and plots of FID, KID, accuracy, time and memory across runs",
                       description="Tabulate evaluations from local folders (searched recursively) or a run "
                                   "registry (s3://bucket/runs/): compare.txt/csv/json/html, fid.png, "
                                   "fid_over_kimg.png.")
    p.add_argument("sources", nargs="+", help="evaluation folders, folders holding them, or s3://.../runs/")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--config", help="YAML or JSON file of options")
    _add_config_options(p, CompareConfig)
    p.set_defaults(func=cmd_compare)
    p = sub.add_parser("fid", help="FID and KID between two datasets or image folders (cross-dataset)",
                       description="FID and KID between any two image sources: Dataset directories, image "
                                   "folders, synthetic:. Writes fid.json.")
    p.add_argument("a", help="first dataset or folder")
    p.add_argument("b", help="second dataset or folder")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--config", help="YAML or JSON file of options")
    _add_config_options(p, FidConfig)
    p.set_defaults(func=cmd_fid)

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
    _add_pipeline_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, FileExistsError, RuntimeError) as e:
        sub = getattr(args, "pipeline_command", None) or getattr(args, "tagger_command", None)
        print(f"animegen {args.command}{' ' + sub if sub else ''}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

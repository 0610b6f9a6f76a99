"""`animegen pipeline run|compile|submit|params`: the pipeline's commands, beside the pipeline.

The parameters (``--param``, ``--params``; placement, sizes and images included) are PipelineParams' fields and the
compile-time flags of compile and submit (retries, secret names) are PipelineOptions' fields
(``animegen.pipelines.params``), both converted by the one coercion path."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from animegen.cli import _key_value, add_config_options, config_from_args
from animegen.config import coerce_value, load_config_file
from animegen.pipelines.backend import (
    HEALTHZ_PATH,
    MIN_BACKEND_TEXT,
    check_backend,
    default_token,
    fetch_backend_info,
)
from animegen.pipelines.local import DEFAULT_ROOT
from animegen.pipelines.pipeline import PARAMETERS, STAGES, PipelineOptions, check_params, compile_pipeline
from animegen.store.namespaces import check_writable


def _param_value(key: str, text: str):
    """A --param value converted to the pipeline parameter's type (bool: true/false/1/0/yes/no; dict: JSON)."""
    if key not in PARAMETERS:
        raise ValueError(f"--param {key}: no such pipeline parameter; `animegen pipeline params` lists them")
    try:
        return coerce_value(PARAMETERS[key].type, text, key, text=True)
    except ValueError as e:
        raise ValueError(f"--param {e}") from None


def _pipeline_params(args: argparse.Namespace) -> dict:
    """--params FILE (YAML/JSON mapping) < --param KEY=VALUE, as typed values (only those given)."""
    values = load_config_file(args.params) if args.params else {}
    for key, text in args.param or []:
        values[key.replace("-", "_")] = _param_value(key.replace("-", "_"), text)
    check_params(values)  # refuses unknown names and wrong types early
    return values


def _rerun_variant(args: argparse.Namespace, given: dict) -> dict:
    """make_pipeline keyword arguments for --only/--from-run/--registry on compile and submit (a rerun that imports
    the other tasks' artifacts of a registry run), or for plain defaults."""
    from animegen.pipelines.local import record_from_registry, rerun_plan

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
    from animegen.pipelines.local import run_local, summary_lines

    given = _pipeline_params(args)  # (placement parameters mean nothing to kfp.local: it ignores them)
    run = run_local(given, args.pipeline_root, only=args.only, from_run=args.from_run, registry=args.registry,
                    threads=args.threads, verbose=args.verbose)
    rec = run.record
    if rec.get("reused"):
        print(f"reused from {args.from_run}: {', '.join(rec['reused'])}; reran: {', '.join(rec['rerun'])}")
    print(f"run {run.run_id} {rec['status']} in {rec['wall_s']:.0f} s; artifacts and task logs: {run.run_dir}")
    for line in summary_lines(run.run_dir):
        print(line)
    print(f"report: {run.report}")
    return 0


def _stage_params(args: argparse.Namespace) -> dict:
    """--params FILE < --param KEY=VALUE for a single-stage pipeline (its own parameters' types)."""
    from animegen.pipelines.single import stage_parameters

    params = stage_parameters(args.stage)
    values = {k.replace("-", "_"): v for k, v in (load_config_file(args.params) if args.params else {}).items()}
    for key, text in args.param or []:
        key = key.replace("-", "_")
        if key not in params:
            raise ValueError(f"--param {key}: no such parameter of the {args.stage}-only pipeline; it takes "
                             f"{', '.join(params)}")
        values[key] = coerce_value(params[key].type, text, key, text=True)
    return values


def cmd_pipeline_compile(args: argparse.Namespace) -> int:
    if args.stage:
        from animegen.pipelines.single import STAGES, compile_stage

        if args.only or args.from_run or args.registry:
            raise ValueError("--stage compiles a single-stage pipeline whose artifact URIs are run parameters; "
                             "--only/--from-run/--registry build a variant of the whole DAG instead: give one or the "
                             "other")
        path = compile_stage(args.stage, args.out or STAGES[args.stage].file.name,
                             config_from_args(PipelineOptions, args, base={}), _stage_params(args))
        print(f"wrote {path} (the {args.stage}-only pipeline: {STAGES[args.stage].pipeline}); upload it in the KFP "
              f"UI and give the earlier run's artifact URIs as run parameters (`animegen pipeline stage-args` "
              f"prints them from a registry record)")
        return 0
    args.out = args.out or "animegen_pipeline.yaml"
    variant = _rerun_variant(args, _pipeline_params(args))
    path = compile_pipeline(args.out, config_from_args(PipelineOptions, args, base={}), **variant)
    what = f"a rerun of {', '.join(sorted(variant['rerun']))}" if "rerun" in variant else "the pipeline"
    print(f"wrote {path} ({what}); upload it in the KFP UI or run `animegen pipeline submit`")
    return 0


def cmd_pipeline_submit(args: argparse.Namespace) -> int:
    import tempfile
    given = _pipeline_params(args)
    variant = _rerun_variant(args, given)
    options = config_from_args(PipelineOptions, args, base={})
    if args.skip_backend_check:
        print(f"not checking the KFP backend's version (--skip-backend-check): it must be >= {MIN_BACKEND_TEXT}")
    else:
        info = check_backend(fetch_backend_info(args.host, args.token or default_token()), args.namespace)
        print(f"KFP backend {info.tag_name} ({info.mode}) at {args.host}")
        if info.multi_user and args.namespace:  # the namespace's key may write only under its own prefixes
            check_writable(given.get("registry_uri") or "", args.namespace)
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


def cmd_pipeline_stage_args(args: argparse.Namespace) -> int:
    from animegen.pipelines.single import stage_arguments
    from animegen.store.registry import read_run

    values = stage_arguments(read_run(args.registry, args.from_run), args.stage, args.model)
    if args.json:
        print(json.dumps(values, indent=2))
    else:
        for key, value in values.items():
            print(f"{key}={value}")
    return 0


def cmd_pipeline_params(args: argparse.Namespace) -> int:
    from animegen.pipelines.docs import parameter_table, write_readmes

    if args.stage:
        from animegen.pipelines.single import stage_parameters

        for name, p in stage_parameters(args.stage).items():
            print(f"{name:24} {p.type.__name__:5} {json.dumps(p.default):>12}  {p.help}")
    elif args.write_readmes:
        for path in write_readmes():
            print(f"updated {path}")
    elif args.markdown:
        print(parameter_table(), end="")
    else:
        for name, p in PARAMETERS.items():
            print(f"{name:24} {p.type.__name__:5} {json.dumps(p.default):>12}  {p.help}")
    return 0


def add_pipeline_parser(sub) -> None:
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
        add_config_options(q.add_argument_group("compile-time options (placement, sizes and images are run "
                                                "parameters: --param gpu_node_selector=... etc.)"), PipelineOptions)

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
    q.add_argument("--verbose", action="store_true", help="print kfp.local's own output (every task's executor "
                   "input and log) instead of a line per task and the logs in <task>/log.txt")
    params_args(q)
    rerun_args(q, local=True)
    q.set_defaults(func=cmd_pipeline_run)

    q = psub.add_parser("compile", help="write the pipeline YAML to upload in the KFP UI",
                        description="Compile the pipeline to the YAML users upload (Pipelines > Upload). "
                                    "--params/--param become the YAML's parameter defaults (placement, sizes and "
                                    "images included: a UI user can still change them per run).")
    q.add_argument("--out", help="output file (default animegen_pipeline.yaml; with --stage STAGE "
                   "STAGE_only.yaml)")
    q.add_argument("--stage", choices=("evaluate", "transfer"),
                   help="compile the single-stage pipeline of this stage instead (its input artifacts are URIs given "
                        "as run parameters: rerun one stage from the UI; the committed evaluate_only.yaml and "
                        "transfer_only.yaml are these with the defaults)")
    params_args(q)
    rerun_args(q, local=False)
    gpu_args(q)
    q.set_defaults(func=cmd_pipeline_compile)

    q = psub.add_parser("stage-args", help="print a single-stage pipeline's URI run parameters from a registry run",
                        description="Read run RUN_ID's record in the run registry and print the artifact-URI run "
                                    "parameters of the single-stage pipeline (--stage) for one model, to paste into "
                                    "the KFP UI's run form.")
    q.add_argument("--registry", required=True, metavar="URI", help="the run registry (s3://BUCKET/PREFIX/runs/ or "
                   "a folder; a default run's: s3://mlpipeline/shared/animegen/runs/, multi-user "
                   "s3://mlpipeline/private/<namespace>/animegen/runs/)")
    q.add_argument("--from-run", required=True, metavar="RUN_ID", help="the run's registry id")
    q.add_argument("--stage", required=True, choices=("evaluate", "transfer"))
    q.add_argument("--model", default="conditional", help="the model (conditional, manga, character, ...; "
                   "transfer: manga or character); default conditional")
    q.add_argument("--json", action="store_true", help="print a JSON object instead of KEY=VALUE lines")
    q.set_defaults(func=cmd_pipeline_stage_args)

    q = psub.add_parser("submit", help="compile and submit a run to a KFP endpoint (kfp.Client)",
                        description="Compile the pipeline and start a run on a KFP v2 endpoint through kfp.Client, "
                                    "with the parameters given (the others keep their defaults). First asks the "
                                    "API server for its version and mode (" + HEALTHZ_PATH + ") and refuses a "
                                    "backend older than " + MIN_BACKEND_TEXT + ", or a multi-user one without "
                                    "--namespace.")
    q.add_argument("--host", required=True, help="KFP API endpoint, e.g. http://localhost:8080")
    q.add_argument("--experiment", default="animegen", help="experiment name (created if missing)")
    q.add_argument("--run-name", help="run name (default: kfp's, pipeline name + time)")
    q.add_argument("--namespace", help="Kubeflow profile namespace (multi-user installs)")
    q.add_argument("--token", help="bearer token (else kfp.Client's own credential lookup)")
    q.add_argument("--skip-backend-check", action="store_true",
                   help="do not ask the API server for its version first (by default submit refuses a KFP "
                        "backend older than " + MIN_BACKEND_TEXT + " or one that reports no version)")
    q.add_argument("--cache", action=argparse.BooleanOptionalAction, default=None,
                   help="force caching on or off for every task (default: each task's own setting)")
    params_args(q)
    rerun_args(q, local=False)
    gpu_args(q)
    q.set_defaults(func=cmd_pipeline_submit)

    q = psub.add_parser("params", help="list the pipeline's parameters with their defaults",
                        description="List the pipeline's parameters (name, type, default, meaning).")
    q.add_argument("--stage", choices=("evaluate", "transfer"),
                   help="list the parameters of this single-stage pipeline instead (`compile --stage`)")
    q.add_argument("--markdown", action="store_true", help="print the Markdown table of pipelines/README.md")
    q.add_argument("--write-readmes", action="store_true", help="regenerate the parameter tables of "
                   "pipelines/README.md and of each component's README.md")
    q.set_defaults(func=cmd_pipeline_params)

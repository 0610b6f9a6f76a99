"""`animegen images build|check`: the pipeline's two container images, built from this repository with one command.

``build`` builds the wheel of this repository, then ``containers/Dockerfile.cpu`` and ``containers/Dockerfile.gpu``
with ``docker buildx`` (both install ``containers/requirements.lock``: the CI lock less the dev tools, same pins and
hashes), optionally pushes them, and prints the values of the pipeline's image run parameters that point at them.
``--dry-run`` prints the same commands without running them (no Docker engine needed).

``check`` is what the image build runs after installing (and what tests/test_images.py runs in a venv holding exactly
the image lock's packages): every locked package at its pinned version, animegen at the expected version, the
components' default images tagged with it, and every component module importable.
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib
import pkgutil
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

from animegen.config import Config, opt

KINDS = ("cpu", "gpu")
PLATFORM = "linux/amd64"  # the locks hold x86_64 wheels only (.ci/lock)
IMAGE_LOCK = "containers/requirements.lock"
# A registry host (optional, with a port) and repository path, as in a Docker image reference (lowercase path).
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
REGISTRY_RE = re.compile(rf"(?:[A-Za-z0-9.-]+(?::\d+)?/)?{_COMPONENT}(?:/{_COMPONENT})*|[A-Za-z0-9.-]+(?::\d+)?")
TAG_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")


@dataclass
class ImageBuildConfig(Config):
    registry: str = field(default="", metadata=opt(
        "where the images go (required): a registry and path, e.g. ghcr.io/you or registry.example.com:5000/team; "
        "the images are REGISTRY/animegen-cpu:TAG and REGISTRY/animegen-gpu:TAG", metavar="REGISTRY",
        default_text="none"))
    tag: str = field(default="", metadata=opt("image tag", default_text="the package version"))
    push: bool = field(default=False, metadata=opt(
        "push both images once built (docker login to the registry first); without it they are loaded into the "
        "local Docker engine"))
    dry_run: bool = field(default=False, metadata=opt(
        "print the commands (wheel, buildx builds) and the run parameters without running anything"))

    def validate(self) -> None:
        self.registry = self.registry.strip().rstrip("/")
        if not self.registry:
            raise ValueError("--registry is required (e.g. ghcr.io/you): the images are pushed or tagged there")
        if not REGISTRY_RE.fullmatch(self.registry):
            raise ValueError(f"--registry {self.registry!r}: not an image repository (HOST[:PORT]/PATH, the path in "
                             "lowercase letters, digits and . _ -; e.g. ghcr.io/you)")
        if self.tag and not TAG_RE.fullmatch(self.tag):
            raise ValueError(f"--tag {self.tag!r}: a Docker tag is up to 128 letters, digits, _ . - (not starting "
                             "with . or -)")


@dataclass
class ImageCheckConfig(Config):
    lock: str = field(default=IMAGE_LOCK, metadata=opt("the lock file the environment was installed from"))
    version: str = field(default="", metadata=opt("the animegen version expected",
                                                  default_text="this package's __version__"))


# ------------------------------------------------------------------------------------------------ the repository
def repo_root(start: Path | None = None) -> Path:
    """The animegen checkout to build from: the first of ``start`` (default: the current folder) and its parents,
    then this module's checkout, that holds pyproject.toml and both Dockerfiles."""
    here = (start or Path.cwd()).resolve()
    for path in (here, *here.parents, Path(__file__).resolve().parents[2]):
        if (path / "pyproject.toml").is_file() and all((path / f"containers/Dockerfile.{k}").is_file() for k in KINDS):
            return path
    raise FileNotFoundError("no animegen checkout here: run `animegen images build` inside the repository (it needs "
                            "pyproject.toml, containers/ and the lock)")


def source_version(root: Path) -> str:
    """The package version of the checkout at ``root`` (src/animegen/__init__.py; pyproject.toml must agree)."""
    init = (root / "src" / "animegen" / "__init__.py").read_text()
    m = re.search(r"^__version__\s*=\s*['\"]([^'\"]+)['\"]", init, re.M)
    if not m:
        raise ValueError(f"{root}/src/animegen/__init__.py defines no __version__")
    project = re.search(r"^version\s*=\s*['\"]([^'\"]+)['\"]", (root / "pyproject.toml").read_text(), re.M)
    if project and project.group(1) != m.group(1):
        raise ValueError(f"pyproject.toml says version {project.group(1)}, src/animegen/__init__.py {m.group(1)}: "
                         "make them equal before building images")
    return m.group(1)


def check_locks(root: Path) -> None:
    """Refuse a build whose image lock has drifted from the CI lock: every package of containers/requirements.lock
    must be pinned the same in requirements.lock (`bash .ci/lock` writes both)."""
    image, ci = read_lock(root / IMAGE_LOCK), read_lock(root / "requirements.lock")
    if not image:
        raise FileNotFoundError(f"{root / IMAGE_LOCK} is missing or empty: run `bash .ci/lock`")
    moved = [f"{n} {v} (requirements.lock: {ci.get(n, 'absent')})" for n, v in image.items() if ci.get(n) != v]
    if moved:
        raise ValueError(f"{IMAGE_LOCK} differs from requirements.lock, what CI tests: {', '.join(moved)}; run "
                         "`bash .ci/lock` and commit both")


def image_refs(registry: str, tag: str) -> dict[str, str]:
    """{'cpu': REGISTRY/animegen-cpu:TAG, 'gpu': REGISTRY/animegen-gpu:TAG}."""
    return {kind: f"{registry.rstrip('/')}/animegen-{kind}:{tag}" for kind in KINDS}


def wheel_name(version: str) -> str:
    return f"animegen-{version}-py3-none-any.whl"


def build_commands(cfg: ImageBuildConfig, root: Path, version: str) -> list[list[str]]:
    """The wheel build, then one ``docker buildx build`` per image (``--push`` or ``--load``), run in ``root``."""
    refs = image_refs(cfg.registry, cfg.tag or version)
    cmds = [[sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", "dist", "."]]
    for kind in KINDS:
        cmds.append(["docker", "buildx", "build", "--platform", PLATFORM, "-f", f"containers/Dockerfile.{kind}",
                     "--build-arg", f"ANIMEGEN_VERSION={version}", "-t", refs[kind],
                     "--push" if cfg.push else "--load", "."])
    return cmds


def run_parameters(refs: dict[str, str]) -> dict[str, str]:
    """The pipeline's run parameters that name an image (those whose default is one of the components' images),
    each set to the built image of the same kind."""
    from animegen.components.container_images import CPU_IMAGE, GPU_IMAGE
    from animegen.pipelines.params import PipelineParams

    kind_of = {CPU_IMAGE: "cpu", GPU_IMAGE: "gpu"}
    return {f.name: refs[kind_of[f.default]] for f in dataclasses.fields(PipelineParams)
            if isinstance(f.default, str) and f.default in kind_of}


def _run(cmd: list[str], cwd: Path) -> None:
    print("+ " + shlex.join(cmd), flush=True)
    subprocess.run(cmd, cwd=cwd, check=True)


def cmd_images_build(args: argparse.Namespace) -> int:
    from animegen.cli import config_from_args

    cfg = config_from_args(ImageBuildConfig, args, base={})
    root = repo_root()
    version = source_version(root)
    check_locks(root)
    refs = image_refs(cfg.registry, cfg.tag or version)
    cmds = build_commands(cfg, root, version)
    wheel = root / "dist" / wheel_name(version)
    if cfg.dry_run:
        print(f"# in {root}")
        print(shlex.join(["rm", "-f", f"dist/{wheel.name}"]))
        for cmd in cmds:
            print(shlex.join(cmd))
    else:
        if shutil.which("docker") is None:
            raise RuntimeError("docker is not installed: `animegen images build` needs Docker with buildx (or use "
                               "--dry-run to see the commands)")
        if subprocess.run(["docker", "buildx", "version"], capture_output=True).returncode != 0:
            raise RuntimeError("`docker buildx` is not available: install the buildx plugin (Docker 23+ has it)")
        wheel.unlink(missing_ok=True)  # never build an image from a stale wheel
        _run(cmds[0], root)
        if not wheel.is_file():
            raise RuntimeError(f"the wheel build made no {wheel}: is the checkout's version {version}?")
        for cmd in cmds[1:]:
            _run(cmd, root)
    state = "would be " if cfg.dry_run else ""
    where = f"pushed to {cfg.registry}" if cfg.push else "loaded into the local Docker engine (push: add --push)"
    print(f"images ({state}{where}):")
    for kind in KINDS:
        print(f"  {kind}: {refs[kind]}")
    params = run_parameters(refs)
    if params:
        print("run parameters (KFP UI, or `animegen pipeline submit|compile --param NAME=VALUE`):")
        for name, value in params.items():
            print(f"  {name}={value}")
        print("  " + " ".join(f"--param {name}={value}" for name, value in params.items()))
    else:
        print("this pipeline has no image run parameters: its images are src/animegen/components/container_images.py")
    return 0


# ------------------------------------------------------------------------------------------------ the check
def read_lock(path: str | Path) -> dict[str, str]:
    """{normalised name: version} of a pip-compile lock (``name==version`` lines)."""
    pins = {}
    for line in Path(path).read_text().splitlines():
        m = re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)", line)
        if m:
            pins[normalise(m.group(1))] = m.group(2)
    return pins


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def component_modules() -> list[str]:
    """Every module of animegen.components (each stage's component.py, the runtime, the image names)."""
    import animegen.components as components

    return sorted(m.name for m in pkgutil.walk_packages(components.__path__, "animegen.components."))


def check_environment(lock: str | Path, version: str) -> list[str]:
    """What this environment gets wrong against the image: every package of ``lock`` at its pinned version, animegen
    at ``version`` (its metadata and __version__), the components' default images tagged ``version``, and every
    component module importable. Returns the problems (empty: all good)."""
    problems = []
    for name, pinned in read_lock(lock).items():
        try:
            installed = metadata.version(name)
        except metadata.PackageNotFoundError:
            problems.append(f"{name}=={pinned} is not installed")
            continue
        if installed != pinned:
            problems.append(f"{name} is {installed}, the lock pins {pinned}")
    import animegen

    for what, got in (("animegen.__version__", animegen.__version__),
                      ("the installed animegen distribution", metadata.version("animegen"))):
        if got != version:
            problems.append(f"{what} is {got}, expected {version}")
    modules = component_modules()
    for module in modules:
        try:
            importlib.import_module(module)
        except Exception as e:  # noqa: BLE001 - every failing module is reported
            problems.append(f"import {module}: {type(e).__name__}: {e}")
    from animegen.components.container_images import CPU_IMAGE, GPU_IMAGE

    for image in (CPU_IMAGE, GPU_IMAGE):
        if image.rsplit(":", 1)[-1] != version:
            problems.append(f"the components' image {image} is not tagged {version}")
    if not any(m.endswith(".component") for m in modules):
        problems.append("no component module found under animegen.components")
    return problems


def cmd_images_check(args: argparse.Namespace) -> int:
    from animegen import __version__
    from animegen.cli import config_from_args

    cfg = config_from_args(ImageCheckConfig, args, base={})
    version = cfg.version or __version__
    problems = check_environment(cfg.lock, version)
    if problems:
        raise RuntimeError(f"this environment does not match {cfg.lock} and animegen {version}:\n  "
                           + "\n  ".join(problems))
    print(f"ok: {len(read_lock(cfg.lock))} locked packages at their pins, animegen {version}, "
          f"{len(component_modules())} component modules import")
    return 0


def add_images_parser(sub) -> None:
    from animegen.cli import add_config_options

    p = sub.add_parser("images", help="build and push the pipeline's container images",
                       description="The CPU and GPU container images of the pipeline (containers/README.md).")
    images = p.add_subparsers(dest="images_command", required=True, metavar="COMMAND")
    b = images.add_parser("build", help="build the wheel and both images (docker buildx), print the run parameters",
                          description="Build the wheel of this checkout, then containers/Dockerfile.cpu and "
                                      "containers/Dockerfile.gpu (linux/amd64), tag them REGISTRY/animegen-{cpu,gpu}:"
                                      "TAG, push them with --push, and print the run parameter values that use them.")
    add_config_options(b, ImageBuildConfig)
    b.set_defaults(func=cmd_images_build)
    c = images.add_parser("check", help="check this environment against the image lock (run by the image build)",
                          description="Every locked package at its pin, animegen at the expected version, every "
                                      "component module importable.")
    add_config_options(c, ImageCheckConfig)
    c.set_defaults(func=cmd_images_check)

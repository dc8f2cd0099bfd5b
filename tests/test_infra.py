"""The cluster path (infra/): KubeRay manifests against the real CRD schemas, plus checks that need no CRDs.

The CRDs are data in the shared folder beside the repository (../shared/kuberay-crds); without it the schema
tests skip and the structural ones still run. Fast: YAML and jsonschema only, no Ray, no models.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
INFRA = ROOT / "infra"
CRD_DIR = Path(__file__).resolve().parents[2] / "shared" / "kuberay-crds"
CRD_FILES = {"RayJob": "ray.io_rayjobs.yaml", "RayCronJob": "ray.io_raycronjobs.yaml",
             "RayCluster": "ray.io_rayclusters.yaml"}
EXPECTED = {"rayjob.yaml": "RayJob", "raycronjob.yaml": "RayCronJob", "raycluster.yaml": "RayCluster",
            "configmap-job.yaml": "ConfigMap"}
KNOWN_KINDS = {("ray.io/v1", k) for k in CRD_FILES} | {("v1", "ConfigMap")}
SECRET_HINTS = ("key", "secret", "token", "password", "credential", "session")
Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.load_all(path.read_text(), Loader=Loader) if d is not None]


def _manifests() -> list[tuple[str, dict[str, Any]]]:
    return [(f"{p.name}#{i}", d) for p in sorted(INFRA.glob("*.yaml")) for i, d in enumerate(_docs(p))]


def _ray_manifests() -> list[tuple[str, dict[str, Any]]]:
    return [(n, d) for n, d in _manifests() if d.get("apiVersion", "").startswith("ray.io/")]


def _cluster_spec(doc: dict[str, Any]) -> dict[str, Any]:
    spec = doc["spec"]
    return {"RayCluster": lambda: spec, "RayJob": lambda: spec["rayClusterSpec"],
            "RayCronJob": lambda: spec["jobTemplate"]["rayClusterSpec"]}[doc["kind"]]()


def _job_spec(doc: dict[str, Any]) -> dict[str, Any]:
    return doc["spec"]["jobTemplate"] if doc["kind"] == "RayCronJob" else doc["spec"]


def _pod_specs(cluster: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    return [("head", cluster["headGroupSpec"]["template"]["spec"])] + [
        (g["groupName"], g["template"]["spec"]) for g in cluster.get("workerGroupSpecs", [])]


def _configmap() -> dict[str, Any]:
    (doc,) = _docs(INFRA / "configmap-job.yaml")
    return doc


# ---- the CRD schema as jsonschema ---------------------------------------------------------------------------


def to_jsonschema(node: Any, closed: bool = True) -> Any:
    """A Kubernetes structural schema (OpenAPI v3) as a JSON Schema the jsonschema package checks.

    ``x-kubernetes-*`` keys are annotations for the API server (list/map types, CEL rules) and are dropped;
    ``x-kubernetes-int-or-string`` becomes integer-or-string; ``nullable`` allows null. Objects with
    ``properties`` are closed (unknown fields are errors, as in kubectl's strict field validation) unless
    ``x-kubernetes-preserve-unknown-fields`` is set.
    """
    if isinstance(node, list):
        return [to_jsonschema(n, closed) for n in node]
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    for k, v in node.items():
        if k.startswith("x-kubernetes-") or k == "nullable":
            continue
        if k in ("properties", "patternProperties"):
            out[k] = {name: to_jsonschema(s, closed) for name, s in v.items()}
        elif k in ("default", "enum", "example", "required", "description", "type", "format", "pattern"):
            out[k] = v  # values, not schemas
        else:
            out[k] = to_jsonschema(v, closed)
    if node.get("x-kubernetes-int-or-string") and "anyOf" not in out and "type" not in out:
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if node.get("nullable") and isinstance(out.get("type"), str):
        out["type"] = [out["type"], "null"]
    if (closed and "properties" in out and "additionalProperties" not in out
            and not node.get("x-kubernetes-preserve-unknown-fields")):
        out["additionalProperties"] = False
    return out


@functools.lru_cache(maxsize=None)
def _validator(kind: str, version: str):
    import jsonschema

    if not CRD_DIR.is_dir():
        pytest.skip(f"KubeRay CRDs not found at {CRD_DIR} (the shared folder beside the repo); "
                    "schema validation of infra/ skipped")
    (crd,) = _docs(CRD_DIR / CRD_FILES[kind])
    assert crd["spec"]["names"]["kind"] == kind
    versions = {v["name"]: v for v in crd["spec"]["versions"]}
    assert version in versions, f"{kind} CRD serves {sorted(versions)}, not {version}"
    assert versions[version].get("served", True), f"{kind} {version} is not served"
    schema = to_jsonschema(versions[version]["schema"]["openAPIV3Schema"])
    return jsonschema.Draft7Validator(schema)


def _schema_errors(doc: dict[str, Any]) -> list[str]:
    version = doc["apiVersion"].split("/", 1)[1]
    v = _validator(doc["kind"], version)
    return [f"{'.'.join(str(p) for p in e.absolute_path) or '<root>'}: {e.message[:300]}"
            for e in sorted(v.iter_errors(doc), key=lambda e: list(map(str, e.absolute_path)))]


@pytest.mark.parametrize("name,doc", _ray_manifests(), ids=[n for n, _ in _ray_manifests()])
def test_manifest_validates_against_kuberay_crd(name: str, doc: dict[str, Any]) -> None:
    errors = _schema_errors(doc)
    assert not errors, f"infra/{name} ({doc['kind']}) does not match the CRD schema:\n" + "\n".join(errors)


def test_crd_validation_catches_mistakes() -> None:
    """The converted schema is not vacuous: a misspelt field, a bad quantity and a wrong type fail."""
    (doc,) = _docs(INFRA / "rayjob.yaml")
    doc["spec"]["shutdownAfterJobFinish"] = True  # typo
    worker = doc["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]
    worker["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] = "one"
    worker["maxReplicas"] = "eight"
    errors = "\n".join(_schema_errors(doc))
    assert "shutdownAfterJobFinish" in errors
    assert "nvidia.com/gpu" in errors
    assert "maxReplicas" in errors


# ---- structure (no CRDs needed) -----------------------------------------------------------------------------


def test_infra_files_present() -> None:
    for f in [*EXPECTED, "Dockerfile", "README.md"]:
        assert (INFRA / f).is_file(), f"infra/{f} missing"
    for f, kind in EXPECTED.items():
        assert [d["kind"] for d in _docs(INFRA / f)] == [kind], f"infra/{f} should hold one {kind}"


@pytest.mark.parametrize("name,doc", _manifests(), ids=[n for n, _ in _manifests()])
def test_manifest_structure(name: str, doc: dict[str, Any]) -> None:
    assert (doc.get("apiVersion"), doc.get("kind")) in KNOWN_KINDS, f"{name}: unexpected apiVersion/kind"
    assert re.fullmatch(r"[a-z0-9]([-a-z0-9]{0,45}[a-z0-9])?", doc["metadata"]["name"]), \
        f"{name}: metadata.name must be a short DNS label"


@pytest.mark.parametrize("name,doc", _ray_manifests(), ids=[n for n, _ in _ray_manifests()])
def test_gpu_worker_group_autoscaling_env(name: str, doc: dict[str, Any]) -> None:
    cluster = _cluster_spec(doc)
    assert cluster.get("enableInTreeAutoscaling") is True, f"{name}: autoscaling off"
    gpu_groups = []
    for g in cluster["workerGroupSpecs"]:
        assert 0 <= g["minReplicas"] <= g.get("replicas", g["minReplicas"]) <= g["maxReplicas"], \
            f"{name}: group {g['groupName']} replicas out of [minReplicas, maxReplicas]"
        for c in g["template"]["spec"]["containers"]:
            res = c.get("resources", {})
            gpus = res.get("limits", {}).get("nvidia.com/gpu")
            if gpus is not None:
                assert int(gpus) >= 1
                assert res.get("requests", {}).get("nvidia.com/gpu", gpus) == gpus, "GPU requests must equal limits"
                gpu_groups.append(g["groupName"])
    assert gpu_groups, f"{name}: no worker group with nvidia.com/gpu limits"
    for group, pod in _pod_specs(cluster):
        for c in pod["containers"]:
            env = {e["name"]: e for e in c.get("env", [])}
            assert env.get("HF_HUB_OFFLINE", {}).get("value") == "1", f"{name}: {group}/{c['name']} not offline"
            for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
                assert "secretKeyRef" in env.get(var, {}).get("valueFrom", {}), \
                    f"{name}: {group}/{c['name']}: {var} must come from a Secret"
            for e in env.values():
                if any(h in e["name"].lower() for h in SECRET_HINTS):
                    assert "value" not in e, f"{name}: {group}/{c['name']}: {e['name']} has an inline value"


@pytest.mark.parametrize("name,doc", [(n, d) for n, d in _ray_manifests() if d["kind"] != "RayCluster"],
                         ids=[n for n, d in _ray_manifests() if d["kind"] != "RayCluster"])
def test_job_runs_a_spec_from_the_configmap(name: str, doc: dict[str, Any]) -> None:
    job = _job_spec(doc)
    assert job.get("shutdownAfterJobFinishes") is True, f"{name}: cluster would outlive the job"
    entry = " ".join(job["entrypoint"].split())
    m = re.match(r"synthgen run /jobs/([A-Za-z0-9_.-]+\.yaml)\b", entry)
    assert m, f"{name}: entrypoint should be 'synthgen run /jobs/<spec>.yaml ...', got {entry!r}"
    assert "--log-format json" in entry
    cm = _configmap()
    assert m.group(1) in cm["data"], f"{name}: /jobs/{m.group(1)} is not a key of ConfigMap {cm['metadata']['name']}"
    head = _cluster_spec(doc)["headGroupSpec"]["template"]["spec"]
    vols = {v["name"]: v for v in head.get("volumes", []) if "configMap" in v}
    mounts = [mt for c in head["containers"] for mt in c.get("volumeMounts", [])
              if mt["mountPath"] == "/jobs" and mt["name"] in vols]
    assert mounts, f"{name}: the head does not mount a ConfigMap at /jobs"
    assert vols[mounts[0]["name"]]["configMap"]["name"] == cm["metadata"]["name"]


_AWS_KEY_ID = re.compile(r"\b(AKIA|ASIA|AGPA|AIDA|AROA)[A-Z0-9]{16}\b")
_SECRET_ASSIGN = re.compile(r"(secret|password|token)[_-]?(access[_-]?)?(key)?\s*[:=]\s*['\"]?[A-Za-z0-9/+]{30,}",
                            re.IGNORECASE)


def test_no_inline_secrets_in_infra() -> None:
    files = [p for p in INFRA.rglob("*") if p.is_file()]
    for p in files:
        text = p.read_text(errors="replace")
        assert not _AWS_KEY_ID.search(text), f"{p}: looks like a literal AWS access key id"
        assert not _SECRET_ASSIGN.search(text), f"{p}: looks like a literal secret"
    for name, doc in _manifests():
        assert doc["kind"] != "Secret", f"{name}: Secrets are created out of band, not committed"
    for key, text in _configmap()["data"].items():
        opts = yaml.safe_load(text)["output"].get("storage_options", {})
        leaked = [k for k in _flat_keys(opts) if any(h in k.lower() for h in SECRET_HINTS)]
        assert not leaked, f"configmap {key}: storage_options carry credentials {leaked}; use the environment"


def _flat_keys(d: Any) -> list[str]:
    return [k for k, v in d.items() for k in [k, *(_flat_keys(v) if isinstance(v, dict) else [])]] \
        if isinstance(d, dict) else []


def test_dockerfile() -> None:
    text = (INFRA / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim\b", text, re.MULTILINE)
    assert re.search(r"pip install \.", text)
    assert "HF_HUB_OFFLINE=1" in text
    ray_version = re.search(r"ARG RAY_VERSION=(\S+)", text).group(1)
    for name, doc in _ray_manifests():
        assert _cluster_spec(doc).get("rayVersion") == ray_version, f"{name}: rayVersion != image's Ray"


# ---- the GPU job specs load as JobSpecs ---------------------------------------------------------------------


def test_gpu_example_job_loads() -> None:
    from pipelines.config import load_job

    spec = load_job(ROOT / "jobs" / "gpu-example.yaml")
    assert spec.generator.device == "cuda" and spec.generator.dtype == "float16"
    assert spec.resources.generate.num_gpus == 1
    assert spec.output.url.startswith("s3://")


def test_configmap_job_specs_load(tmp_path: Path) -> None:
    from pipelines.config import load_job

    data = _configmap()["data"]
    assert data
    for key, text in data.items():
        assert key.endswith(".yaml")
        p = tmp_path / key
        p.write_text(text)
        spec = load_job(p)
        assert spec.generator.device == "cuda" and spec.resources.generate.num_gpus >= 1
        twin = ROOT / "jobs" / key
        if twin.is_file():  # the ConfigMap is the deployable copy of jobs/<key>: keep them in sync
            assert yaml.safe_load(text) == yaml.safe_load(twin.read_text()), f"configmap {key} != jobs/{key}"

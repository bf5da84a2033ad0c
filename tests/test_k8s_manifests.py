"""The kustomize overlays, verified without a cluster.

Each overlay is rendered by `kubectl kustomize` (the real tool, offline) from a copy of the tree
whose secret env files are the committed examples. Built-in kinds are checked by
`kubernetes-validate --strict`, the InferenceService by KServe's own SDK models, the Prometheus
operator objects by models generated from their CRDs. What would need an API server (admission,
scheduling, the KServe and Prometheus controllers) is out of reach here.
"""

from __future__ import annotations

import copy
import os
import stat
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.k8s import (
    CUSTOM_KINDS,
    NAMESPACE,
    OVERLAYS,
    ROOT,
    VERSIONS,
    Doc,
    containers,
    crd_model_problems,
    env_file,
    example_tree,
    find,
    network_policies,
    pod_labels,
    pod_specs,
    policy_allows,
    render,
    rendered_yaml,
    run,
    sdk_schema_problems,
    selects,
    tool,
)

SPOOL_CLAIM = "visionops-prediction-log-spool"


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return example_tree(tmp_path_factory.mktemp("k8s-tree"))


@pytest.fixture(scope="module", params=OVERLAYS)
def overlay(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="module")
def docs(overlay: str, tree: Path) -> list[Doc]:
    return render(overlay, tree)


def test_overlay_renders_and_builtin_kinds_pass_strict_validation(
    overlay: str, tree: Path, docs: list[Doc], tmp_path: Path
) -> None:
    rendered = tmp_path / f"{overlay}.yaml"
    rendered.write_text(rendered_yaml(overlay, tree))
    node_version = VERSIONS["KIND_NODE_IMAGE"].rsplit(":v", 1)[1]
    for version in (node_version, None):
        args = ["--strict", *(["-k", version] if version else []), str(rendered)]
        proc = run(tool("kubernetes-validate"), *args, cwd=tmp_path)
        output = proc.stdout + proc.stderr
        builtin = [d for d in docs if d["kind"] not in CUSTOM_KINDS]
        assert output.count(" passed for resource ") == len(builtin), output
        for line in output.splitlines():
            if line.startswith(("WARN", "ERROR")):
                assert "Couldn't find schema for kind" in line, line
                assert any(f"kind {k} " in line for k in CUSTOM_KINDS), line


def test_one_namespace_plus_the_kubeflow_bindings(docs: list[Doc]) -> None:
    namespaces = {d["metadata"].get("namespace") for d in docs if d["kind"] != "Namespace"}
    assert namespaces == {NAMESPACE, "kubeflow"}
    in_kubeflow = {
        (d["kind"], d["metadata"]["name"])
        for d in docs
        if d["metadata"].get("namespace") == "kubeflow"
    }
    assert in_kubeflow == {
        ("Role", "visionops-run-submitter"),
        ("RoleBinding", "visionops-pipeline-runner-submitter"),
        ("ConfigMap", "visionops-settings"),
        ("Secret", "s3-pipeline"),
    }
    ns = find(docs, "Namespace", NAMESPACE)
    assert ns["metadata"]["labels"]["pod-security.kubernetes.io/warn"] == "restricted"


def test_inferenceservice_validates_against_the_kserve_sdk(docs: list[Doc]) -> None:
    isvc = find(docs, "InferenceService", "visionops-predictor")
    assert sdk_schema_problems(isvc, "V1beta1InferenceService") == []

    # The checker itself rejects what KServe would: an unknown field, a wrongly typed one.
    broken = copy.deepcopy(isvc)
    broken["spec"]["predictor"]["containers"][0]["resource"] = {}
    broken["spec"]["predictor"]["minReplicas"] = "1"
    del broken["spec"]["predictor"]["containers"][0]["name"]
    problems = sdk_schema_problems(broken, "V1beta1InferenceService")
    assert len(problems) == 3, problems
    assert any("`name`, must not be `None`" in p for p in problems), problems


def test_inferenceservice_serves_the_custom_predictor_from_minio(docs: list[Doc]) -> None:
    isvc = find(docs, "InferenceService", "visionops-predictor")
    assert isvc["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "Standard"
    predictor = isvc["spec"]["predictor"]
    (container,) = predictor["containers"]
    assert container["name"] == "kserve-container"
    assert {p["containerPort"] for p in container["ports"]} == {8080, 8081}
    assert container["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": 8080}
    assert container["livenessProbe"]["httpGet"] == {"path": "/v2/health/live", "port": 8080}
    # The model comes through KServe's storage-initializer: STORAGE_URI first (the deploy step's
    # contract), an s3:// URI in the bucket the serving user may read.
    storage = container["env"][0]
    assert storage["name"] == "STORAGE_URI"
    assert storage["value"].startswith("s3://visionops/models/")

    account = find(docs, "ServiceAccount", predictor["serviceAccountName"])
    (secret_ref,) = account["secrets"]
    secret = find(docs, "Secret", secret_ref["name"])
    notes = secret["metadata"]["annotations"]
    minio = find(docs, "Service", "minio")
    assert notes["serving.kserve.io/s3-endpoint"] == (
        f"minio.{NAMESPACE}.svc.cluster.local:{minio['spec']['ports'][0]['port']}"
    )
    assert notes["serving.kserve.io/s3-usehttps"] == "0"
    assert set(secret["data"]) == {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
    # The container's own S3 credentials (prediction log) are the same Secret.
    refs = {
        e["valueFrom"]["secretKeyRef"]["name"]
        for e in container["env"]
        if "valueFrom" in e and "secretKeyRef" in e["valueFrom"]
    }
    assert refs == {secret["metadata"]["name"]}


def test_prometheus_operator_objects_validate_against_their_crds(docs: list[Doc]) -> None:
    monitoring = [d for d in docs if d["apiVersion"] == "monitoring.coreos.com/v1"]
    assert {d["kind"] for d in monitoring} >= {"ServiceMonitor", "PrometheusRule"}
    for doc in monitoring:
        assert crd_model_problems(doc) == [], doc["metadata"]["name"]
    monitor = find(docs, "ServiceMonitor", "visionops-predictor")
    bad_value, unknown = copy.deepcopy(monitor), copy.deepcopy(monitor)
    bad_value["spec"]["endpoints"][0]["interval"] = "every minute"
    unknown["spec"]["endpoints"][0]["portName"] = "http"
    assert "interval" in crd_model_problems(bad_value)[0]
    assert crd_model_problems(unknown) == [".spec.endpoints[0].portName: unknown field"]


def test_service_monitor_scrapes_each_predictor_pod_once(docs: list[Doc]) -> None:
    monitor = find(docs, "ServiceMonitor", "visionops-predictor")
    services = [
        d
        for d in docs
        if d["kind"] == "Service" and selects(monitor["spec"]["selector"], d["metadata"]["labels"])
    ]
    assert [s["metadata"]["name"] for s in services] == ["visionops-predictor"]
    (endpoint,) = monitor["spec"]["endpoints"]
    port = next(p for p in services[0]["spec"]["ports"] if p["name"] == endpoint["port"])
    isvc = find(docs, "InferenceService", "visionops-predictor")
    assert selects({"matchLabels": services[0]["spec"]["selector"]}, pod_labels(isvc))
    assert port["targetPort"] == 8080 and endpoint["path"] == "/metrics"


def _workloads(docs: list[Doc]) -> list[tuple[str, Doc]]:
    return [item for d in docs for item in pod_specs(d)]


def test_every_container_is_locked_down(overlay: str, docs: list[Doc]) -> None:
    workloads = _workloads(docs)
    names = {c["name"] for _, spec in workloads for c in containers(spec)}
    expected = {"minio", "mc", "mlflow", "kserve-container", "pushgateway"}
    assert names == (expected | {"postgres"} if overlay == "production" else expected)
    for where, spec in workloads:
        pod_sc = spec.get("securityContext", {})
        assert pod_sc.get("seccompProfile", {}).get("type") == "RuntimeDefault", where
        assert spec.get("automountServiceAccountToken") is False, where
        assert not any(spec.get(k) for k in ("hostNetwork", "hostPID", "hostIPC")), where
        writable = {v["name"] for v in spec.get("volumes", []) if "emptyDir" in v} | {
            t["metadata"]["name"] for t in _claim_templates(docs, where)
        }
        for c in containers(spec):
            label = f"{where}/{c['name']}"
            sc = c.get("securityContext", {})
            assert sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")) is True, label
            assert sc.get("readOnlyRootFilesystem") is True, label
            assert sc.get("allowPrivilegeEscalation") is False, label
            assert sc.get("capabilities", {}).get("drop") == ["ALL"], label
            assert not sc.get("capabilities", {}).get("add"), label
            assert not sc.get("privileged"), label
            for bound in ("requests", "limits"):
                assert set(c["resources"][bound]) >= {"cpu", "memory"}, f"{label}: {bound}"
            # A read-only root fs needs somewhere to write: /tmp is an emptyDir everywhere.
            mounts = {m["mountPath"]: m["name"] for m in c.get("volumeMounts", [])}
            assert mounts.get("/tmp") in writable, f"{label}: no writable /tmp"
            assert ":" in c["image"].rsplit("/", 1)[-1], f"{label}: untagged image"
            assert not c["image"].endswith(":latest"), label


def _claim_templates(docs: list[Doc], where: str) -> list[Doc]:
    kind, name = where.split("/")[:2]
    doc = find(docs, kind, name)
    return doc["spec"].get("volumeClaimTemplates", []) if kind == "StatefulSet" else []


def test_network_policies_deny_by_default_and_allow_what_each_service_needs(
    docs: list[Doc],
) -> None:
    policies = network_policies(docs)
    deny = find(docs, "NetworkPolicy", "default-deny")
    assert deny["spec"] == {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}
    workloads = {d["metadata"]["name"]: pod_labels(d) for d in docs if pod_labels(d)}
    for policy in policies:
        selector = policy["spec"]["podSelector"]
        assert not selector or any(selects(selector, labels) for labels in workloads.values()), (
            f"{policy['metadata']['name']} selects no pod"
        )
        for direction, key in (("ingress", "from"), ("egress", "to")):
            for rule in policy["spec"].get(direction, []):
                for peer in rule.get(key, []):
                    if "podSelector" in peer and "namespaceSelector" not in peer:
                        assert any(
                            selects(peer["podSelector"], labels) for labels in workloads.values()
                        )

    # Every port of every Service is open to someone; every same-namespace egress rule is matched
    # by an ingress rule on the target (and the other way round), so no flow is half-allowed.
    for service in (d for d in docs if d["kind"] == "Service"):
        targets = [
            labels
            for labels in workloads.values()
            if selects({"matchLabels": service["spec"]["selector"]}, labels)
        ]
        assert targets, service["metadata"]["name"]
        for port in service["spec"]["ports"]:
            target_port = port["targetPort"]
            number = (
                target_port
                if isinstance(target_port, int)
                else _named_port(docs, targets[0], target_port)
            )
            assert policy_allows(policies, "ingress", targets[0], None, number), (
                service["metadata"]["name"],
                number,
            )

    for source, src_labels in workloads.items():
        for dest, dest_labels in workloads.items():
            for port in (9000, 5000, 5432, 8080, 8081):
                out = policy_allows(policies, "egress", src_labels, dest_labels, port)
                inn = policy_allows(policies, "ingress", dest_labels, src_labels, port)
                assert out == inn, f"{source} -> {dest}:{port}: egress {out}, ingress {inn}"


def _named_port(docs: list[Doc], labels: dict[str, str], name: str) -> int:
    for d in docs:
        if pod_labels(d) == labels:
            for _, spec in pod_specs(d):
                for c in containers(spec):
                    for p in c.get("ports", []):
                        if p.get("name") == name:
                            return int(p["containerPort"])
    raise AssertionError(f"no container port named {name}")


def test_pipeline_rbac_is_limited_to_the_inferenceservice_and_kfp_runs(docs: list[Doc]) -> None:
    assert not [d for d in docs if d["kind"] in ("ClusterRole", "ClusterRoleBinding")]
    roles = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Role"}
    for role in roles.values():
        for rule in role["rules"]:
            assert "*" not in rule["verbs"] + rule["resources"] + rule["apiGroups"]
    deployer = roles["visionops-inferenceservice-deployer"]
    assert deployer["rules"] == [
        {
            "apiGroups": ["serving.kserve.io"],
            "resources": ["inferenceservices"],
            "resourceNames": ["visionops-predictor"],
            "verbs": ["get", "watch", "patch"],
        }
    ]
    submitter = roles["visionops-run-submitter"]
    assert {g for r in submitter["rules"] for g in r["apiGroups"]} == {"pipelines.kubeflow.org"}
    assert {v for r in submitter["rules"] for v in r["verbs"]} == {"create", "get", "list"}
    for binding in (d for d in docs if d["kind"] == "RoleBinding"):
        assert binding["roleRef"]["name"] in roles
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": "pipeline-runner", "namespace": "kubeflow"}
        ]


def test_pipeline_settings_point_at_the_rendered_services(
    docs: list[Doc], settings_env: pytest.MonkeyPatch
) -> None:
    from visionops.config import get_settings

    config = find(docs, "ConfigMap", "visionops-settings")["data"]
    for key, value in config.items():
        settings_env.setenv(key, value)
    settings = get_settings()
    mlflow, minio = find(docs, "Service", "mlflow"), find(docs, "Service", "minio")
    assert settings.tracking_uri == (
        f"http://mlflow.{NAMESPACE}.svc.cluster.local:{mlflow['spec']['ports'][0]['port']}"
    )
    assert settings.s3_endpoint == (
        f"http://minio.{NAMESPACE}.svc.cluster.local:{minio['spec']['ports'][0]['port']}"
    )
    buckets = find(docs, "ConfigMap", _generated(docs, "minio-buckets"))["data"]["BUCKETS"]
    assert settings.s3_bucket in buckets.split()
    secret = find(docs, "Secret", "s3-pipeline")
    assert secret["metadata"]["namespace"] == "kubeflow"
    assert set(secret["data"]) == {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}


def _generated(docs: list[Doc], prefix: str) -> str:
    (name,) = [
        d["metadata"]["name"] for d in docs if d["metadata"]["name"].startswith(f"{prefix}-")
    ]
    return name


def test_mlflow_backend_store_per_overlay(overlay: str, docs: list[Doc]) -> None:
    mlflow = find(docs, "Deployment", "mlflow")
    (container,) = mlflow["spec"]["template"]["spec"]["containers"]
    store = next(e for e in container["env"] if e["name"] == "MLFLOW_BACKEND_STORE_URI")
    assert "--backend-store-uri=$(MLFLOW_BACKEND_STORE_URI)" in container["args"]
    assert "--artifacts-destination=s3://mlflow/artifacts" in container["args"]
    claims = [
        d["metadata"]["name"]
        for d in docs
        if d["kind"] == "PersistentVolumeClaim" and d["metadata"]["name"] != SPOOL_CLAIM
    ]
    if overlay == "kind":
        assert store["value"] == "sqlite:////data/mlflow.db"
        assert mlflow["spec"]["replicas"] == 1 and mlflow["spec"]["strategy"]["type"] == "Recreate"
        assert claims == ["mlflow-data"]
    else:
        secret = find(docs, "Secret", store["valueFrom"]["secretKeyRef"]["name"])
        assert set(secret["data"]) >= {"POSTGRES_PASSWORD", "MLFLOW_BACKEND_STORE_URI"}
        assert mlflow["spec"]["replicas"] >= 2 and claims == []
        find(docs, "StatefulSet", "postgres")


def test_predictor_shutdown_covers_the_log_flush_and_its_spool_outlives_the_pod(
    overlay: str, docs: list[Doc]
) -> None:
    """SIGTERM: requests in flight finish (serve grace), then the prediction log writes or spools
    (flush timeout); Kubernetes must not SIGKILL before both are done. The spool is on a volume
    that outlives the pod (a rolling update replaces pods), big enough for every replica's."""
    from visionops.config import Settings

    isvc = find(docs, "InferenceService", "visionops-predictor")
    predictor = isvc["spec"]["predictor"]
    (container,) = predictor["containers"]
    env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    settings = Settings(**{k.removeprefix("VISIONOPS_").lower(): v for k, v in env.items()
                           if k.startswith("VISIONOPS_") and not k.endswith("_KEY")})  # fmt: skip
    needed = settings.serve_shutdown_grace_s + settings.log_flush_timeout_s
    assert predictor["terminationGracePeriodSeconds"] >= needed + 5, needed

    spool = settings.log_spool_dir
    assert spool is not None
    (mount,) = [m for m in container["volumeMounts"] if spool.is_relative_to(m["mountPath"])]
    (volume,) = [v for v in predictor["volumes"] if v["name"] == mount["name"]]
    claim = find(docs, "PersistentVolumeClaim", volume["persistentVolumeClaim"]["claimName"])
    assert claim["metadata"]["name"] == SPOOL_CLAIM
    size = claim["spec"]["resources"]["requests"]["storage"]
    mib = int(size.removesuffix("Gi")) * 1024
    assert predictor["maxReplicas"] * settings.log_spool_max_mb <= mib, size
    if predictor["maxReplicas"] > 1:  # replicas land on several nodes
        assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
        assert claim["spec"].get("storageClassName")


def test_production_scales_the_predictor_and_pins_storage(overlay: str, docs: list[Doc]) -> None:
    isvc = find(docs, "InferenceService", "visionops-predictor")
    predictor = isvc["spec"]["predictor"]
    templates = [
        t for d in docs if d["kind"] == "StatefulSet" for t in d["spec"]["volumeClaimTemplates"]
    ]
    if overlay == "kind":
        assert predictor["minReplicas"] == predictor["maxReplicas"] == 1
        assert all("storageClassName" not in t["spec"] for t in templates)
        return
    assert isvc["metadata"]["annotations"]["serving.kserve.io/autoscalerClass"] == "hpa"
    assert 2 <= predictor["minReplicas"] < predictor["maxReplicas"]
    assert (predictor["scaleMetric"], predictor["scaleTarget"]) == ("cpu", 70)
    assert all(t["spec"].get("storageClassName") for t in templates)
    budgets = [d for d in docs if d["kind"] == "PodDisruptionBudget"]
    workloads = [pod_labels(d) for d in docs if pod_labels(d)]
    assert len(budgets) == 2
    for budget in budgets:
        assert any(selects(budget["spec"]["selector"], labels) for labels in workloads)


def test_image_references_agree_with_settings_and_build_script(
    overlay: str, docs: list[Doc]
) -> None:
    from visionops.config import IMAGE_REGISTRY, IMAGE_TAG, Settings

    assert (VERSIONS["VISIONOPS_IMAGE_REGISTRY"], VERSIONS["VISIONOPS_IMAGE_TAG"]) == (
        IMAGE_REGISTRY,
        IMAGE_TAG,
    )
    registry = IMAGE_REGISTRY if overlay == "kind" else VERSIONS["VISIONOPS_RELEASE_REGISTRY"]
    ours = {
        c["image"]
        for _, spec in _workloads(docs)
        for c in containers(spec)
        if "visionops-" in c["image"]
    }
    assert ours == {
        f"{registry}/visionops-predictor:{IMAGE_TAG}",
        f"{registry}/visionops-mlflow:{IMAGE_TAG}",
    }
    if overlay == "kind":
        assert f"{registry}/visionops-predictor:{IMAGE_TAG}" == Settings().predictor_image
    # hack/images.sh (make images) builds visionops-<name> from images/Dockerfile.<name>.
    built = (ROOT / "hack" / "images.sh").read_text()
    assert "wanted=(pipeline predictor mlflow)" in built
    for image in ours | {f"{registry}/visionops-pipeline:{IMAGE_TAG}"}:
        name = image.rsplit("/", 1)[1].split(":")[0].removeprefix("visionops-")
        assert name in ("pipeline", "predictor", "mlflow"), name
        assert (ROOT / "images" / f"Dockerfile.{name}").is_file(), name


def test_compiled_components_run_on_the_built_pipeline_image(tmp_path: Path) -> None:
    from kfp import compiler

    from components import visionops_component
    from visionops.config import IMAGE_REGISTRY, IMAGE_TAG

    def probe(x: int) -> int:
        return x

    # KFP reads real types; this module postpones annotations, so give them back.
    probe.__annotations__ = {"x": int, "return": int}
    out = tmp_path / "probe.yaml"
    compiler.Compiler().compile(visionops_component(probe), str(out))
    executors = yaml.safe_load(out.read_text())["deploymentSpec"]["executors"]
    images = {e["container"]["image"] for e in executors.values()}
    assert images == {f"{IMAGE_REGISTRY}/visionops-pipeline:{IMAGE_TAG}"}
    assert "pipeline) build images/Dockerfile.pipeline" in (ROOT / "hack" / "images.sh").read_text()


def test_no_secret_values_in_the_repository(tree: Path, docs: list[Doc]) -> None:
    tracked = run("git", "ls-files", cwd=ROOT).stdout.split()
    env_files = [f for f in tracked if f.endswith(".env")]
    assert env_files == ["hack/versions.env"]
    examples = [f for f in tracked if f.endswith(".env.example")]
    assert len(examples) == 10  # 9 of the overlays, Label Studio's component
    for example in examples:
        for key, value in env_file(ROOT / example).items():
            if any(word in key for word in ("PASSWORD", "SECRET", "URI")):
                assert "change-me" in value, f"{example}: {key} holds a value, not a placeholder"
        real = example.removesuffix(".example")
        ignored = run("git", "check-ignore", "-q", real, cwd=ROOT, check=False)
        assert ignored.returncode == 0, f"{real} is not ignored by git"
    for path in tracked:
        if path.endswith((".yaml", ".yml")) and path.startswith(("manifests/", "kustomize/")):
            objects = [d for d in yaml.safe_load_all((ROOT / path).read_text()) if d]
            assert all(d.get("kind") != "Secret" for d in objects), f"{path}: use a generator"
    # Every rendered Secret comes from a generator, with exactly its example's keys.
    for secret in (d for d in docs if d["kind"] == "Secret"):
        base = secret["metadata"]["name"].rsplit("-", 1)[0]
        if base == "s3":  # the unhashed kubeflow copy
            base = secret["metadata"]["name"]
        example = next(tree.glob(f"kustomize/overlays/*/secrets/{base}.env.example"))
        assert set(secret["data"]) == set(env_file(example)), base


def _fake_kubectl(bin_dir: Path) -> None:
    """A kubectl that answers like a cluster without the VisionOps platform.

    Stands in for the Kubernetes API server, which cannot run here: every call fails, as
    `kubectl get crd ...` does on a cluster where hack/install-platform.sh has not run.
    """
    fake = bin_dir / "kubectl"
    fake.write_text('#!/bin/sh\necho "Error from server (NotFound): $*" >&2\nexit 1\n')
    fake.chmod(0o755)


def test_deploy_generates_missing_secrets_once_and_stops_without_the_platform(
    tmp_path: Path,
) -> None:
    import shutil

    root = tmp_path / "repo"
    shutil.copytree(ROOT / "hack", root / "hack")
    shutil.copytree(ROOT / "kustomize", root / "kustomize", ignore=shutil.ignore_patterns("*.env"))
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    _fake_kubectl(bin_dir)
    env = {**os.environ, "PATH": f"{bin_dir}:/usr/bin:/bin", "KUBE_CONTEXT": "prod-test"}

    def deploy() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["bash", str(root / "hack" / "deploy.sh"), "production"],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
        )

    first = deploy()
    assert first.returncode == 1
    assert (
        "CRD inferenceservices.serving.kserve.io missing: run hack/install-platform.sh"
        in first.stderr
    )
    secrets = root / "kustomize" / "overlays" / "production" / "secrets"
    generated = {p.name: p.read_text() for p in secrets.glob("*.env")}
    assert len(generated) == 5 and "generated" in first.stdout
    for name, text in generated.items():
        assert "change-me" not in text, name
        assert stat.S_IMODE((secrets / name).stat().st_mode) == 0o600, name
    postgres = env_file(secrets / "postgres.env")
    assert len(postgres["POSTGRES_PASSWORD"]) == 40
    assert f":{postgres['POSTGRES_PASSWORD']}@" in postgres["MLFLOW_BACKEND_STORE_URI"]
    passwords = {env_file(secrets / n).get("AWS_SECRET_ACCESS_KEY") for n in generated}
    assert len(passwords - {None}) == 3, "each S3 user gets its own secret"

    second = deploy()
    assert second.returncode == 1 and "present" in second.stdout
    assert {p.name: p.read_text() for p in secrets.glob("*.env")} == generated


def _entrypoint(dockerfile: str) -> list[str]:
    import json

    lines = (ROOT / "images" / dockerfile).read_text().splitlines()
    (entry,) = [line.removeprefix("ENTRYPOINT ") for line in lines if line.startswith("ENTRYPOINT")]
    return list(json.loads(entry))


def test_predictor_container_args_parse_with_the_predictors_own_cli(docs: list[Doc]) -> None:
    from serving.__main__ import KSERVE_MODEL_DIR, build_parser
    from visionops.config import Settings

    (container,) = find(docs, "InferenceService", "visionops-predictor")["spec"]["predictor"][
        "containers"
    ]
    assert "command" not in container, "the image's ENTRYPOINT starts the predictor"
    assert _entrypoint("Dockerfile.predictor") == ["python", "-m", "serving"]
    settings = Settings()
    args = build_parser(settings).parse_args(container["args"])
    assert args.model_dir == KSERVE_MODEL_DIR  # where KServe's storage-initializer puts STORAGE_URI
    assert args.model_name == settings.model_name
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert (args.http_port, args.grpc_port) == (ports["http1"], ports["h2c"])
    # The prediction log goes to S3 through the settings the container's env sets.
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["VISIONOPS_S3_ENDPOINT"].startswith("http://minio.")
    with pytest.raises(SystemExit):
        build_parser(settings).parse_args([*container["args"], "--model-uri=s3://x/y"])


def test_mlflow_container_runs_the_images_entrypoint(docs: list[Doc]) -> None:
    (container,) = find(docs, "Deployment", "mlflow")["spec"]["template"]["spec"]["containers"]
    assert container["command"] == _entrypoint("Dockerfile.mlflow") == ["mlflow"]


def test_mlflow_server_runs_with_the_rendered_flags_and_admits_in_cluster_hosts(
    tmp_path: Path, tree: Path
) -> None:
    """The kind overlay's MLflow command line, run for real on 127.0.0.1 (only the bind address,
    port and sqlite path differ): in-cluster service names pass the Host check, others get 403."""
    import http.client

    from tests.servers import free_port, http_status, stop, wait_until

    docs = render("kind", tree)
    (container,) = find(docs, "Deployment", "mlflow")["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    port = free_port()
    store = env["MLFLOW_BACKEND_STORE_URI"].replace("/data/", f"{tmp_path}/")
    args = [
        a.replace("$(MLFLOW_BACKEND_STORE_URI)", store)
        for a in container["args"]
        if not a.startswith(("--host=", "--port=", "--workers="))
    ]
    server_env = {**os.environ, **{k: v for k, v in env.items() if k != "HOME"}}
    log = (tmp_path / "mlflow.log").open("wb")
    proc = subprocess.Popen(
        [tool("mlflow"), *args, "--host=127.0.0.1", f"--port={port}", "--workers=1"],
        stdout=log, stderr=subprocess.STDOUT, env=server_env, cwd=tmp_path,
        start_new_session=True,
    )  # fmt: skip

    def status(host: str) -> int:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request(
            "GET", "/api/2.0/mlflow/experiments/search?max_results=1", headers={"Host": host}
        )
        return conn.getresponse().status

    try:
        url = f"http://127.0.0.1:{port}"
        wait_until(
            lambda: http_status(f"{url}/health") == 200, timeout=90, what="mlflow", proc=proc
        )
        settings = find(docs, "ConfigMap", "visionops-settings")["data"]
        pipeline_host = settings["VISIONOPS_MLFLOW_TRACKING_URI"].removeprefix("http://")
        assert status(pipeline_host) == 200
        assert status("mlflow.visionops.svc:5000") == 200
        assert status(f"localhost:{port}") == 200
        assert status("mlflow.evil.example:5000") == 403
    finally:
        stop(proc)
        log.close()

"""The optional Label Studio component (kustomize/components/label-studio), on top of each overlay.

Rendered by `kubectl kustomize` from an overlay that adds the component to kind or production,
checked by `kubernetes-validate --strict` like the overlays, and held to the same rules: every
container locked down, a volume for what it writes, its Secret generated (never committed), and
network policies that let pipeline steps in and nothing out. The image itself is not run here
(it cannot be pulled offline); `visionops label studio` runs the same Label Studio version from
PyPI in tests/test_labeling_studio.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.k8s import (
    CUSTOM_KINDS,
    NAMESPACE,
    OVERLAYS,
    ROOT,
    VERSIONS,
    Doc,
    containers,
    env_file,
    example_tree,
    find,
    network_policies,
    pod_labels,
    pod_specs,
    policy_allows,
    run,
    selects,
    tool,
)

COMPONENT = "kustomize/components/label-studio"


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return example_tree(tmp_path_factory.mktemp("k8s-label-studio"))


@pytest.fixture(scope="module", params=OVERLAYS)
def overlay(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="module")
def rendered(overlay: str, tree: Path) -> str:
    """The overlay plus the component, as a user enables it (`components:` in a kustomization)."""
    folder = tree / "kustomize" / "overlays" / f"{overlay}-label-studio"
    folder.mkdir(exist_ok=True)
    (folder / "kustomization.yaml").write_text(
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n"
        f"resources:\n  - ../{overlay}\ncomponents:\n  - ../../components/label-studio\n"
    )
    return run(tool("kubectl"), "kustomize", str(folder)).stdout


@pytest.fixture(scope="module")
def docs(rendered: str) -> list[Doc]:
    import yaml

    return [d for d in yaml.safe_load_all(rendered) if d]


def test_component_renders_on_each_overlay_and_passes_strict_validation(
    rendered: str, docs: list[Doc], tmp_path: Path
) -> None:
    path = tmp_path / "rendered.yaml"
    path.write_text(rendered)
    node_version = VERSIONS["KIND_NODE_IMAGE"].rsplit(":v", 1)[1]
    proc = run(tool("kubernetes-validate"), "--strict", "-k", node_version, str(path))
    builtin = [d for d in docs if d["kind"] not in CUSTOM_KINDS]
    assert (proc.stdout + proc.stderr).count(" passed for resource ") == len(builtin)
    ours = {
        (d["kind"], d["metadata"]["name"])
        for d in docs
        if d["metadata"].get("labels", {}).get("app.kubernetes.io/name") == "label-studio"
    }
    assert ours == {
        ("ServiceAccount", "label-studio"),
        ("PersistentVolumeClaim", "label-studio-data"),
        ("Service", "label-studio"),
        ("Deployment", "label-studio"),
    }
    assert all(d["metadata"].get("namespace") == NAMESPACE for d in docs if "label-studio" in
               d["metadata"]["name"])  # fmt: skip


def test_label_studio_runs_locked_down_with_its_data_on_a_volume(docs: list[Doc]) -> None:
    deployment = find(docs, "Deployment", "label-studio")
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}  # one sqlite writer
    ((_, spec),) = pod_specs(deployment)
    pod_sc = spec["securityContext"]
    assert pod_sc["seccompProfile"]["type"] == "RuntimeDefault" and pod_sc["runAsNonRoot"]
    assert spec["automountServiceAccountToken"] is False
    (container,) = containers(spec)
    sc = container["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert set(container["resources"]["limits"]) == {"cpu", "memory"}
    image = container["image"]
    assert image == "heartexlabs/label-studio:1.23.2"
    assert "label-studio==1.23.2" in (ROOT / "requirements" / "label-studio.txt").read_text()

    env = {e["name"]: e for e in container["env"]}
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in spec["volumes"]}
    data = env["LABEL_STUDIO_BASE_DATA_DIR"]["value"]
    claim = volumes[mounts[data]]["persistentVolumeClaim"]["claimName"]
    assert find(docs, "PersistentVolumeClaim", claim)["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert "emptyDir" in volumes[mounts["/tmp"]] and env["HOME"]["value"] == "/tmp"
    assert container["command"] == ["label-studio"]
    assert "--port=8080" in container["args"]
    assert container["startupProbe"]["httpGet"]["path"] == "/health"


def test_offline_settings_match_the_local_command(docs: list[Doc]) -> None:
    from visionops.labeling.studio import OFFLINE_ENV, REMOVED_ENV

    (container,) = containers(find(docs, "Deployment", "label-studio")["spec"]["template"]["spec"])
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert {k: env.get(k) for k in OFFLINE_ENV} == OFFLINE_ENV
    assert not set(REMOVED_ENV) & set(env)


def test_credentials_come_from_a_generated_secret(docs: list[Doc], tree: Path) -> None:
    (container,) = containers(find(docs, "Deployment", "label-studio")["spec"]["template"]["spec"])
    refs = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in container["env"] if "valueFrom" in e}
    assert set(refs) == {"LABEL_STUDIO_USERNAME", "LABEL_STUDIO_PASSWORD", "SECRET_KEY"}
    (name,) = {r["name"] for r in refs.values()}
    assert name.startswith("label-studio-")  # the generator's hashed name, rolled on a change
    secret = find(docs, "Secret", name)
    example = env_file(tree / COMPONENT / "secrets" / "label-studio.env.example")
    assert set(secret["data"]) == set(example) == {r["key"] for r in refs.values()}
    assert "change-me" in example["LABEL_STUDIO_PASSWORD"]
    tracked = run("git", "ls-files", COMPONENT, cwd=ROOT).stdout.split()
    assert f"{COMPONENT}/secrets/label-studio.env.example" in tracked
    assert f"{COMPONENT}/secrets/label-studio.env" not in tracked
    ignored = run("git", "check-ignore", "-q", f"{COMPONENT}/secrets/label-studio.env", cwd=ROOT,
                  check=False)  # fmt: skip
    assert ignored.returncode == 0


def test_only_pipeline_steps_reach_it_and_it_reaches_nothing(docs: list[Doc]) -> None:
    policies = network_policies(docs)
    studio = pod_labels(find(docs, "Deployment", "label-studio"))
    pipeline_step = {"workflows.argoproj.io/workflow": "run-1"}
    own = find(docs, "NetworkPolicy", "label-studio")
    assert own["spec"]["egress"] == []
    (rule,) = own["spec"]["ingress"]
    (peer,) = rule["from"]
    assert peer["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": "kubeflow"}
    assert selects(peer["podSelector"], pipeline_step)
    assert [p["port"] for p in rule["ports"]] == [8080]
    service = find(docs, "Service", "label-studio")
    assert selects({"matchLabels": service["spec"]["selector"]}, studio)
    # No pod of the namespace may connect to it, and it connects to none (DNS aside, which the
    # namespace-wide policy allows every pod).
    for name, labels in ((d["metadata"]["name"], pod_labels(d)) for d in docs if pod_labels(d)):
        if labels == studio:
            continue
        assert not policy_allows(policies, "ingress", studio, labels, 8080), name
        for port in (9000, 5000, 8080, 9091):
            assert not policy_allows(policies, "egress", studio, labels, port), (name, port)


def test_pipeline_steps_find_it_through_their_settings(docs: list[Doc]) -> None:
    """The label steps read VISIONOPS_LABEL_STUDIO_URL from the settings ConfigMap (optional
    there: without the component the window goes out as COCO); it names this Service."""
    settings = find(docs, "ConfigMap", "visionops-settings")
    service = find(docs, "Service", "label-studio")
    (port,) = service["spec"]["ports"]
    assert settings["data"]["VISIONOPS_LABEL_STUDIO_URL"] == (
        f"http://{service['metadata']['name']}.{service['metadata']['namespace']}"
        f".svc.cluster.local:{port['port']}"
    )

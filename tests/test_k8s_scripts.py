"""hack/ scripts and images/ Dockerfiles, checked without Docker, kind or a cluster.

Static checks use the real linters (shellcheck, hadolint). The scripts' behaviour is exercised
with stand-ins for `docker`, `kind` and `kubectl` that record their calls: Docker and kind cannot
run here, and these stand-ins answer as they would, so what is tested is the scripts' own logic
(idempotency, the cluster config they write, the images they build).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.k8s import ROOT, example_tree, render, run, shell_assignments, tool

HACK = ROOT / "hack"
SCRIPTS = sorted(p for p in HACK.glob("*.sh") if p.name != "lib.sh")
DOCKERFILES = sorted((ROOT / "images").glob("Dockerfile.*"))
VERSIONS = shell_assignments(HACK / "versions.env")


def test_scripts_pass_shellcheck() -> None:
    run(tool("shellcheck"), *(str(p) for p in sorted(HACK.glob("*.sh"))), cwd=ROOT)
    bucket_script = ROOT / "manifests" / "minio" / "buckets" / "create-buckets.sh"
    run(tool("shellcheck"), "--shell=sh", str(bucket_script), cwd=ROOT)


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_scripts_are_strict_executable_and_say_what_they_do(script: Path) -> None:
    text = script.read_text()
    assert text.startswith("#!/usr/bin/env bash\n")
    commands = [line for line in text.splitlines() if line.strip() and not line.startswith("#")]
    assert commands[0] == "set -euo pipefail", script.name
    assert 'source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"' in text
    assert len(re.findall(r'^\s*step "', text, flags=re.M)) >= 2, "each step announces itself"
    assert os.access(script, os.X_OK)
    run("bash", "-n", str(script))


def test_versions_are_pinned_in_one_file() -> None:
    assert set(VERSIONS) >= {
        "KIND_VERSION", "KIND_NODE_IMAGE", "CERT_MANAGER_VERSION", "KSERVE_VERSION",
        "KFP_VERSION", "KUBE_PROMETHEUS_STACK_VERSION", "REGISTRY_IMAGE",
        "VISIONOPS_IMAGE_REGISTRY", "VISIONOPS_IMAGE_TAG",
    }  # fmt: skip
    for key, value in VERSIONS.items():
        assert value and "latest" not in value, key
    # KServe 0.21 needs Kubernetes >= 1.32.
    major, minor = map(int, VERSIONS["KIND_NODE_IMAGE"].rsplit(":v", 1)[1].split(".")[:2])
    assert (major, minor) >= (1, 32)
    # No script pins a version of its own.
    for script in HACK.glob("*.sh"):
        assert not re.search(r"--version [v0-9]", script.read_text()), script.name
    assert f"localhost:{VERSIONS['REGISTRY_PORT']}" == VERSIONS["VISIONOPS_IMAGE_REGISTRY"]


def test_dockerfiles_pass_hadolint_and_install_through_the_constraints() -> None:
    run(tool("hadolint"), *(str(p) for p in DOCKERFILES), cwd=ROOT)
    for dockerfile in DOCKERFILES:
        text = dockerfile.read_text().replace("\\\n", " ")
        installs = [line for line in text.splitlines() if "pip install" in line]
        assert installs, dockerfile.name
        for line in installs:
            assert re.search(r"pip install .*-c \S*constraints\.txt", line), line
        assert "COPY requirements/constraints.txt" in text
        # The final stage runs as a numeric non-root user.
        users = re.findall(r"^USER (\S+)", text, flags=re.M)
        assert users and users[-1].split(":")[0] not in ("0", "root"), dockerfile.name
    predictor = (ROOT / "images" / "Dockerfile.predictor").read_text()
    instructions = [line for line in predictor.splitlines() if line and not line.startswith("#")]
    assert '".[serve${EXTRAS:+,${EXTRAS}}]"' in predictor
    assert "torch" not in "\n".join(instructions).lower()
    pipeline = (ROOT / "images" / "Dockerfile.pipeline").read_text()
    assert "'.[pipeline]'" in pipeline
    # Dependencies install before the code is copied: a code change rebuilds the last layers only.
    for text, extra in ((predictor, ".[serve"), (pipeline, "'.[pipeline]'")):
        assert text.index(extra) < text.index("COPY visionops visionops")
        assert "pip install --no-cache-dir --no-deps" in text.split("COPY visionops visionops")[1]
    assert f"ARG TORCH_INDEX_URL={VERSIONS['TORCH_INDEX_URL']}" in pipeline
    assert '${TORCH_INDEX_URL:+--extra-index-url "${TORCH_INDEX_URL}"}' in pipeline


def test_dockerignore_lets_through_exactly_what_the_images_copy() -> None:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    allowed = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    assert "*" in lines, ".dockerignore must be an allowlist"
    assert "**/*.env" in lines
    copied = set()
    for dockerfile in DOCKERFILES:
        for line in dockerfile.read_text().splitlines():
            if line.startswith("COPY ") and "--from=" not in line:
                copied.update(line.split()[1:-1])
    assert copied <= allowed, copied - allowed
    for path in copied:
        assert (ROOT / path).exists(), path


def test_the_predictor_image_closure_has_no_torch() -> None:
    from images.predictor_size import installed_bytes, serve_closure

    closure = serve_closure()
    assert {"kserve", "onnxruntime", "opencv-python-headless", "prometheus-client"} <= set(closure)
    heavy = {k for k in closure if k in {"torch", "torchvision", "ultralytics", "opencv-python"}}
    assert not heavy and not any(k.startswith("nvidia-") for k in closure)
    # The figure in images/README.md comes from here; it must stay a small fraction of torch's.
    total = sum(installed_bytes(d) for d in closure.values())
    assert 100e6 < total < 1.5e9


# ----------------------------------------------------------------- behaviour, with stand-ins

FAKE_DOCKER = r"""#!/bin/sh
# Stand-in for docker: records the call, answers from $FAKE_STATE.
echo "docker $*" >> "$FAKE_STATE/calls"
case "$1" in
  inspect)
    case "$*" in
      *State.Running*) if [ -f "$FAKE_STATE/registry" ]; then echo true; else exit 1; fi ;;
      *Networks.kind*) if [ -f "$FAKE_STATE/connected" ]; then echo '{}'; else echo null; fi ;;
      *) [ -f "$FAKE_STATE/registry" ] || exit 1 ;;
    esac ;;
  run) touch "$FAKE_STATE/registry" ;;
  rm) rm -f "$FAKE_STATE/registry" ;;
  network) touch "$FAKE_STATE/connected" ;;
  exec) if [ "$2" = "-i" ]; then cat > "$FAKE_STATE/hosts.toml"; fi ;;
  image) echo 812000000 ;;
  version) echo 20.10.24 ;;
esac
exit 0
"""
FAKE_KIND = r"""#!/bin/sh
# Stand-in for kind: records the call, keeps the cluster's existence in $FAKE_STATE.
echo "kind $*" >> "$FAKE_STATE/calls"
case "$1 $2" in
  "version "*) echo "kind v0.30.0 go1.24.6 linux/amd64" ;;
  "get clusters") if [ -f "$FAKE_STATE/cluster" ]; then echo visionops; fi ;;
  "get nodes") echo visionops-control-plane ;;
  "create cluster") cat > "$FAKE_STATE/kind-config.yaml"; touch "$FAKE_STATE/cluster" ;;
  "delete cluster") rm -f "$FAKE_STATE/cluster" ;;
esac
exit 0
"""
FAKE_KUBECTL = r"""#!/bin/sh
# Stand-in for kubectl against an API server: records the call and what it would apply.
echo "kubectl $*" >> "$FAKE_STATE/calls"
case "$*" in *"-f -"*) cat > "$FAKE_STATE/applied.yaml" ;; esac
exit 0
"""


@pytest.fixture
def fakes(tmp_path: Path) -> tuple[dict[str, str], Path]:
    bin_dir, state = tmp_path / "bin", tmp_path / "state"
    bin_dir.mkdir()
    state.mkdir()
    for name, body in (("docker", FAKE_DOCKER), ("kind", FAKE_KIND), ("kubectl", FAKE_KUBECTL)):
        (bin_dir / name).write_text(body)
        (bin_dir / name).chmod(0o755)
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "FAKE_STATE": str(state), "HOME": str(tmp_path),
           "IMAGES_LOG_DIR": str(tmp_path / "logs"), "TORCH_INDEX_URL": ""}  # fmt: skip
    return env, state


def _script(name: str, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(HACK / name), *args],
        capture_output=True, text=True, env=env, timeout=60, stdin=subprocess.DEVNULL,
    )  # fmt: skip


def _calls(state: Path) -> list[str]:
    path = state / "calls"
    calls = path.read_text().splitlines() if path.exists() else []
    path.write_text("")
    return calls


def test_kind_up_creates_once_and_maps_every_nodeport(
    fakes: tuple[dict[str, str], Path], tmp_path: Path
) -> None:
    env, state = fakes
    first = _script("kind-up.sh", env)
    assert first.returncode == 0, first.stderr
    calls = _calls(state)
    assert any(c.startswith("docker run -d --restart=always --name kind-registry") for c in calls)
    assert any(c.startswith("kind create cluster --name visionops") for c in calls)
    assert "docker network connect kind kind-registry" in calls
    assert (state / "hosts.toml").read_text() == '[host."http://kind-registry:5000"]\n'

    # The cluster config maps every NodePort the kind overlay and the platform values declare.
    config = yaml.safe_load((state / "kind-config.yaml").read_text())
    (node,) = config["nodes"]
    mappings = node["extraPortMappings"]
    assert all(m["listenAddress"] == "127.0.0.1" for m in mappings)
    assert all(m["hostPort"] == m["containerPort"] for m in mappings)
    docs = render("kind", example_tree(tmp_path / "tree"))
    node_ports = {
        p["nodePort"]
        for d in docs
        if d["kind"] == "Service" and d["spec"].get("type") == "NodePort"
        for p in d["spec"]["ports"]
    }
    values = yaml.safe_load((HACK / "values" / "kube-prometheus-stack.yaml").read_text())
    node_ports |= {
        values["grafana"]["service"]["nodePort"],
        values["prometheus"]["service"]["nodePort"],
    }
    assert {m["containerPort"] for m in mappings} == node_ports
    hosting = yaml.safe_load((state / "applied.yaml").read_text())
    assert VERSIONS["VISIONOPS_IMAGE_REGISTRY"] in hosting["data"]["localRegistryHosting.v1"]

    again = _script("kind-up.sh", env)
    assert again.returncode == 0, again.stderr
    calls = _calls(state)
    assert not [c for c in calls if c.startswith(("docker run", "kind create", "docker network"))]
    assert again.stdout.count("already") == 3


def test_teardown_removes_what_exists_and_skips_what_does_not(
    fakes: tuple[dict[str, str], Path],
) -> None:
    env, state = fakes
    (state / "cluster").touch()
    (state / "registry").touch()
    first = _script("teardown.sh", env)
    assert first.returncode == 0, first.stderr
    calls = _calls(state)
    assert "kind delete cluster --name visionops" in calls
    assert "docker rm --force kind-registry" in calls
    again = _script("teardown.sh", env)
    assert again.returncode == 0 and again.stdout.count("not present") == 2
    assert not [c for c in _calls(state) if "delete" in c or " rm " in c]
    bad = _script("teardown.sh", env, "--force")
    assert bad.returncode == 1 and "unknown option '--force'" in bad.stderr


def test_build_images_builds_the_references_the_overlays_and_pipelines_use(
    fakes: tuple[dict[str, str], Path], tmp_path: Path
) -> None:
    from visionops.config import Settings

    env, state = fakes
    result = _script("build-images.sh", env)
    assert result.returncode == 0, result.stderr
    calls = _calls(state)
    builds = [c for c in calls if c.startswith("docker build")]
    built = {c.split("--tag ")[1].split()[0] for c in builds if "--target" not in c}
    # Named earlier stages are built and tagged first (their layer cache stays findable).
    stages = {c.split("--tag ")[1].split()[0] for c in builds if "--target" in c}
    assert stages == {
        f"{VERSIONS['VISIONOPS_IMAGE_REGISTRY']}/visionops-predictor:0.1.0-deps",
        f"{VERSIONS['VISIONOPS_IMAGE_REGISTRY']}/visionops-mlflow:0.1.0-build",
    }
    pushed = {c.removeprefix("docker push ") for c in calls if c.startswith("docker push")}
    docs = render("kind", example_tree(tmp_path / "tree"))
    in_overlay = {
        c["image"]
        for d in docs
        if d["kind"] in ("Deployment", "InferenceService")
        for c in (
            d["spec"]["predictor"]["containers"]
            if d["kind"] == "InferenceService"
            else d["spec"]["template"]["spec"]["containers"]
        )
        if "/visionops-" in c["image"]
    }
    settings = Settings()
    assert built == pushed == in_overlay | {settings.pipeline_image}
    assert settings.predictor_image in built
    for call in (c for c in calls if c.startswith("docker build")):
        dockerfile = call.split("--file ")[1].split()[0]
        assert Path(dockerfile).is_file() and call.endswith(str(ROOT))
    assert "size: 812 MB" in result.stdout
    # The build is hack/images.sh's (one copy of it): base and torch index as it chose them.
    assert all("--build-arg PYTHON_IMAGE=python:3.11-slim-bookworm" in c
               for c in calls if c.startswith("docker build"))  # fmt: skip
    assert any("--build-arg TORCH_INDEX_URL= " in c for c in calls)

    release = _script("build-images.sh", env, "--kind-load", "--release", "--gpu")
    assert release.returncode == 0, release.stderr
    calls = _calls(state)
    loaded = {c.rsplit(" ", 1)[1] for c in calls if c.startswith("kind load docker-image")}
    registry, tag = VERSIONS["VISIONOPS_RELEASE_REGISTRY"], VERSIONS["VISIONOPS_IMAGE_TAG"]
    assert f"{registry}/visionops-pipeline:{tag}-cuda" in loaded and len(loaded) == 4
    assert any(f"--build-arg TORCH_INDEX_URL={VERSIONS['TORCH_CUDA_INDEX_URL']}" in c
               for c in calls)  # fmt: skip
    assert not [c for c in calls if c.startswith("docker push")]


def _path_without(tmp_path: Path, *hidden: str) -> str:
    """A PATH with every command of /usr/bin and /bin except `hidden` (linked, not copied), as
    on a machine where those are not installed."""
    folder = tmp_path / "bin"
    folder.mkdir()
    for directory in (Path("/usr/bin"), Path("/bin")):
        for command in directory.iterdir():
            target = folder / command.name
            if command.name not in hidden and not target.exists() and not target.is_symlink():
                target.symlink_to(command)
    return str(folder)


def test_build_images_help_and_bad_options_need_no_docker(tmp_path: Path) -> None:
    env = {"PATH": _path_without(tmp_path, "docker"), "HOME": str(tmp_path)}
    assert shutil.which("docker", path=env["PATH"]) is None
    usage = _script("build-images.sh", env, "--help")
    assert usage.returncode == 0 and "--kind-load" in usage.stdout
    bad = _script("build-images.sh", env, "--push")
    assert bad.returncode == 1 and "unknown option '--push'" in bad.stderr
    missing = _script("build-images.sh", env)
    assert missing.returncode == 1 and "'docker' is required" in missing.stderr


def test_workflows_pass_actionlint_and_run_hack_as_written() -> None:
    """.github/workflows: lint + tests through .ci/run, release images through
    hack/build-images.sh, and the kind job through every hack/ step in README order."""
    workflows = ROOT / ".github" / "workflows"
    files = sorted(workflows.glob("*.yml"))
    run(tool("actionlint"), "-shellcheck=" + tool("shellcheck"), *map(str, files), cwd=ROOT)
    docs = {p.stem: yaml.safe_load(p.read_text()) for p in files}
    steps = {
        name: [s.get("run", "") for job in doc["jobs"].values() for s in job["steps"]]
        for name, doc in docs.items()
    }
    assert "bash .ci/run" in steps["ci"]
    assert "hack/build-images.sh --release" in steps["images"]
    order = ["hack/kind-up.sh", "hack/install-platform.sh", "hack/build-images.sh",
             "hack/deploy.sh", "hack/run-e2e.sh", "hack/teardown.sh"]  # fmt: skip
    assert [s for s in steps["kind-e2e"] if s in order] == order

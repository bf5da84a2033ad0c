"""Export to and import from a real Label Studio on 127.0.0.1 (`visionops label studio`).

Label Studio runs once per session from the virtualenv `make label-studio` installs (tests/
conftest.py `label_studio`); each test works in a project of its own. A scripted annotator stands
in for people: it submits, through Label Studio's API, the pre-annotations unchanged as its
annotations (or skips a task, or leaves it alone).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.servers import LabelStudio, free_port
from tests.studio_cli import ls_cli, ls_export, ls_import, root_boxes, summary_json
from visionops.data.classmap import build_class_map
from visionops.data.vision import open_vision
from visionops.labeling.batch import (
    BatchItem,
    Prediction,
    SelectionBatch,
    Window,
    image_path,
    write_manifest,
)
from visionops.labeling.label_studio import config_labels, label_config
from visionops.labeling.label_studio_client import LabelStudioClient

NAMES = ["Cable/break", "Cable/thunderbolt", "Screw/scratch"]
# (width, height, boxes): class, score, x, y, w, h in pixels, fractions on purpose
IMAGES = [
    (64, 48, [("Cable/break", 0.41, 3.25, 4.5, 20.75, 11.125)]),
    (64, 48, [("Cable/thunderbolt", 0.52, 10.0, 7.3, 30.1, 22.9),
              ("Cable/break", 0.33, 0.0, 0.0, 12.6, 9.4)]),
    (80, 60, [("Screw/scratch", 0.28, 41.7, 33.3, 38.3, 26.7)]),
    (80, 60, [("Screw/scratch", 0.26, 5.0, 5.0, 10.0, 10.0)]),  # the annotator removes it
    (80, 60, []),  # nothing found, nothing drawn: no product to place it, left out
]  # fmt: skip
CLEARED = 3  # the image whose box the annotator removes: a background image of Screw


def _batch(folder: Path, images: list = IMAGES, *, seed: int = 0) -> SelectionBatch:
    """A selection batch folder as `label select` writes it: PNGs and their manifest."""
    rng = np.random.default_rng(seed)
    (folder / "images").mkdir(parents=True)
    items = []
    for index, (width, height, boxes) in enumerate(images):
        pixels = rng.integers(0, 255, (height, width, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / "scratch.png")
        data = (folder / "scratch.png").read_bytes()
        relative = image_path(hashlib.sha256(data).hexdigest(), "png")
        (folder / "scratch.png").rename(folder / relative)
        product = "Screw" if width == 80 else "Cable"
        predictions = tuple(Prediction(c, s, (x, y, w, h)) for c, s, x, y, w, h in boxes)
        items.append(
            BatchItem(
                relative,
                f"images/dt=2026-01-01/{relative[7:]}",
                f"req-{index}",
                "2026-01-01T10:00:00Z",
                width,
                height,
                (f"uncertain ({product})",),
                1.0 - index / 10,
                predictions,
            )
        )
    batch = SelectionBatch("defects", "4", list(NAMES), Window("a", "b", "log"), seed, 10, items)
    write_manifest(folder, batch)
    return batch


@pytest.fixture
def client(label_studio: LabelStudio) -> Iterator[LabelStudioClient]:
    with LabelStudioClient(label_studio.url, label_studio.token) as api:
        yield api


def _annotate(client: LabelStudioClient, project: str, *, accept: int, skip: int = 0) -> None:
    """The scripted annotator: submits the first `accept` tasks' pre-annotations unchanged (but
    removes the box of image CLEARED), skips the next `skip`, leaves the rest alone."""
    found = client.find_project(project)
    assert found is not None
    tasks = sorted(client.tasks(int(found["id"]), full=True), key=lambda t: t["id"])
    for index, task in enumerate(tasks[:accept]):
        result = task["predictions"][0]["result"] if task["predictions"] else []
        accepted = {"result": [] if index == CLEARED else result, "was_cancelled": False,
                    "lead_time": 2.5}  # fmt: skip
        client.request("POST", f"/api/tasks/{task['id']}/annotations/", json=accepted)
    for task in tasks[accept : accept + skip]:
        client.request("POST", f"/api/tasks/{task['id']}/annotations/",
                       json={"result": [], "was_cancelled": True})  # fmt: skip


def test_accepted_pre_annotations_come_back_within_half_a_pixel(
    label_studio: LabelStudio, client: LabelStudioClient, tmp_path: Path
) -> None:
    batch = _batch(tmp_path / "batch")
    code, output = ls_export(label_studio, tmp_path / "batch", "round-trip")
    assert code == 0, output
    summary = summary_json(output)
    assert (summary["tasks_created"], summary["already_there"], summary["boxes"]) == (5, 0, 5)
    assert summary["project_created"] is True
    project = client.find_project("round-trip")
    assert project is not None and config_labels(project["label_config"]) == NAMES

    # What people see: each image, served by Label Studio, with the model's boxes to correct.
    tasks = sorted(client.tasks(summary["project_id"], full=True), key=lambda t: t["id"])
    for task, item in zip(tasks, batch.items, strict=True):
        served = client.request("GET", task["data"]["image"]).content
        assert hashlib.sha256(served).hexdigest() == item.sha256
        results = task["predictions"][0]["result"] if item.predictions else []
        assert len(results) == len(item.predictions)
        for result, prediction in zip(results, item.predictions, strict=True):
            assert result["value"]["rectanglelabels"] == [prediction.class_name]
            assert result["value"]["x"] == pytest.approx(100 * prediction.bbox[0] / item.width)

    _annotate(client, "round-trip", accept=5)
    code, output = ls_import(label_studio, "round-trip", tmp_path / "root")
    assert code == 0, output
    imported = summary_json(output)
    assert (imported["labelled"], imported["unfinished"], imported["boxes"]) == (5, 0, 4)
    assert (imported["background"], imported["unplaced"], imported["total_images"]) == (1, 1, 4)

    got = root_boxes(tmp_path / "root")
    class_map = build_class_map(open_vision(tmp_path / "root"))
    assert class_map.names == sorted(NAMES)
    assert set(got) == {item.sha256 for item in batch.items[:4]}
    assert got[batch.items[CLEARED].sha256] == []
    for item in batch.items[:CLEARED]:
        expected = sorted(
            (class_map.names.index(p.class_name), list(p.bbox)) for p in item.predictions
        )
        back = sorted(got[item.sha256])
        assert [c for c, _ in back] == [c for c, _ in expected]
        for (_, box), (_, want) in zip(back, expected, strict=True):
            assert np.abs(np.array(box) - np.array(want)).max() <= 0.5, (box, want)
            assert np.array(box) == pytest.approx(want, abs=1e-6)

    # Import again: the same root, nothing rewritten.
    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "root").rglob("*")}
    code, output = ls_import(label_studio, "round-trip", tmp_path / "root")
    assert code == 0 and summary_json(output)["reused"] is True, output
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "root").rglob("*")} == before


def test_re_export_adds_only_new_images(
    label_studio: LabelStudio, client: LabelStudioClient, tmp_path: Path
) -> None:
    _batch(tmp_path / "batch")
    assert ls_export(label_studio, tmp_path / "batch", "again")[0] == 0
    code, output = ls_export(label_studio, tmp_path / "batch", "again")
    assert code == 0, output
    summary = summary_json(output)
    assert (summary["tasks_created"], summary["already_there"]) == (0, 5)
    assert summary["project_created"] is False and summary["config_updated"] is False

    # A later batch sharing two images with the first: only its new image becomes a task.
    _batch(tmp_path / "later", [*IMAGES[:2], (96, 72, [])], seed=0)
    code, output = ls_export(label_studio, tmp_path / "later", "again")
    assert code == 0, output
    assert (summary_json(output)["tasks_created"], summary_json(output)["already_there"]) == (1, 2)
    digests = [t["data"]["visionops_sha256"] for t in client.tasks(summary["project_id"])]
    assert len(digests) == len(set(digests)) == 6


def test_unfinished_tasks_are_counted_or_refused(
    label_studio: LabelStudio, client: LabelStudioClient, tmp_path: Path
) -> None:
    _batch(tmp_path / "batch")
    assert ls_export(label_studio, tmp_path / "batch", "partial")[0] == 0
    _annotate(client, "partial", accept=2, skip=1)

    code, output = ls_import(label_studio, "partial", tmp_path / "strict", "--require-complete")
    assert code == 1
    (line,) = [x for x in output.splitlines() if x.startswith("error:")]
    assert "3 of 5 tasks of project 'partial' are not labelled yet" in line
    assert not (tmp_path / "strict").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["batch"]  # no download folder left either

    code, output = ls_import(label_studio, "partial", tmp_path / "root")
    assert code == 0, output
    summary = summary_json(output)
    assert (summary["labelled"], summary["unfinished"], summary["skipped"]) == (2, 3, 1)
    assert summary["total_images"] == 2 and summary["boxes"] == 3
    assert "left out 3 unfinished tasks (1 skipped)" in output


def test_a_project_labelled_with_other_classes_is_refused(
    label_studio: LabelStudio, client: LabelStudioClient, tmp_path: Path
) -> None:
    client.create_project("other-classes", label_config(["Wood/knot", "Cable/break"]))
    _batch(tmp_path / "batch")
    code, output = ls_export(label_studio, tmp_path / "batch", "other-classes")
    assert code == 1
    assert output.strip().splitlines() == [
        "error: project 'other-classes' at "
        f"{label_studio.url} labels [Cable/break, Wood/knot], but the batch's classes are "
        "[Cable/break, Cable/thunderbolt, Screw/scratch]: export to another --project"
    ]
    project = client.find_project("other-classes")
    assert project is not None
    assert list(client.tasks(int(project["id"]))) == []
    assert config_labels(project["label_config"]) == ["Wood/knot", "Cable/break"]


def test_wrong_token_and_unreachable_are_one_line_and_write_nothing(
    label_studio: LabelStudio, tmp_path: Path
) -> None:
    _batch(tmp_path / "batch")
    forged = label_studio.token[:-4] + (
        "AAAA" if not label_studio.token.endswith("AAAA") else "BBBB"
    )
    for token in (forged, "0123456789abcdef0123456789abcdef01234567"):  # a JWT, a legacy key
        code, output = ls_cli(label_studio, "label", "export", tmp_path / "batch", "--to",
                              "label-studio", "--url", label_studio.url, "--project", "never",
                              token=token)  # fmt: skip
        assert code == 1
        (line,) = output.strip().splitlines()
        assert line.startswith(f"error: Label Studio at {label_studio.url} refused the token")
    code, output = ls_import(label_studio, "never", tmp_path / "root")
    assert code == 1 and "no project titled 'never'" in output  # the forged ones made none

    dead = f"http://127.0.0.1:{free_port()}"
    for args in (
        ["export", tmp_path / "batch", "--to", "label-studio"],
        ["import", "--from", "label-studio", "--out", tmp_path / "root"],
    ):
        code, output = ls_cli(label_studio, "label", *args, "--url", dead, "--project", "p")
        assert code == 1
        assert output.strip().splitlines() == [
            f"error: Label Studio is unreachable at {dead}: connection refused"
        ]
    assert not (tmp_path / "root").exists()

    code, output = ls_cli(label_studio, "label", "export", tmp_path / "batch", "--to",
                          "label-studio", "--url", label_studio.url, "--project", "p",
                          token="")  # fmt: skip
    assert code == 1 and "no Label Studio token: set VISIONOPS_LABEL_STUDIO_TOKEN" in output


def test_label_studio_command_serves_offline_with_a_generated_admin(
    label_studio: LabelStudio,
) -> None:
    """What `visionops label studio` printed works; its admin file is private; Label Studio was
    started with its phone-home off and listens on 127.0.0.1 only."""
    import requests

    assert label_studio.url.startswith("http://127.0.0.1:")
    assert len(label_studio.password) >= 16 and label_studio.token.count(".") == 2
    admin = label_studio.data_dir / "visionops-admin.json"
    assert oct(admin.stat().st_mode & 0o777) == "0o600"
    assert json.loads(admin.read_text())["token"] == label_studio.token
    # Label Studio 1.23 has legacy tokens off: the printed token is a personal access token.
    answer = requests.post(f"{label_studio.url}/api/token/refresh/",
                           json={"refresh": label_studio.token}, timeout=10)  # fmt: skip
    assert answer.status_code == 200 and "access" in answer.json()
    # Sign-up without an invitation is off: only the generated admin can log in.
    with requests.Session() as browser:
        browser.get(f"{label_studio.url}/user/signup/", timeout=10)
        form = {"email": "someone@example.com", "password": "another-password-123",
                "csrfmiddlewaretoken": browser.cookies.get("csrftoken", "")}  # fmt: skip
        signup = browser.post(f"{label_studio.url}/user/signup/", data=form, timeout=10,
                              allow_redirects=False)  # fmt: skip
    assert signup.status_code == 403

    (child,) = _children(label_studio.proc.pid)
    env = dict(
        entry.split("=", 1)
        for entry in Path(f"/proc/{child}/environ").read_text().split("\0")
        if "=" in entry
    )
    assert "HOST" not in env and env["LABEL_STUDIO_SENTRY_DSN"] == ""
    assert env["LABEL_STUDIO_LATEST_VERSION_CHECK"] == "false"
    assert env["LABEL_STUDIO_COLLECT_ANALYTICS"] == "false"
    listening = _listening_ports(child)
    assert listening and all(address == "127.0.0.1" for address, _ in listening), listening


def test_label_studio_command_refuses_a_busy_port(label_studio: LabelStudio) -> None:
    port = label_studio.url.rsplit(":", 1)[1]
    code, output = ls_cli(label_studio, "label", "studio", "--port", port)
    assert code == 2
    assert f"port {port} on 127.0.0.1 is in use; choose another --port" in output


def _children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text().split()
        found += [int(x) for x in text]
    return found


def _listening_ports(pid: int) -> list[tuple[str, int]]:
    """(address, port) of the TCP sockets process `pid` listens on (IPv4)."""
    links = [str(fd.readlink()) for fd in Path(f"/proc/{pid}/fd").iterdir()]
    inodes = {
        x.removeprefix("socket:[").removesuffix("]") for x in links if x.startswith("socket:")
    }
    listening = []
    for line in Path(f"/proc/{pid}/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, state, inode = fields[1], fields[3], fields[9]
        if state == "0A" and inode in inodes:  # LISTEN
            address, port = local.split(":")
            octets = bytes.fromhex(address)[::-1]
            listening.append((".".join(str(b) for b in octets), int(port, 16)))
    return listening

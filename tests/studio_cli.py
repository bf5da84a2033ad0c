"""The `visionops label` commands against a real Label Studio, as the Label Studio tests call
them (tests/test_labeling_studio.py, tests/test_labeling_annotator.py)."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from tests.servers import LabelStudio
from visionops.cli.app import app
from visionops.config import get_settings
from visionops.data.classmap import build_class_map
from visionops.data.vision import open_vision

runner = CliRunner()


def ls_cli(studio: LabelStudio, *args: object, token: str | None = None) -> tuple[int, str]:
    """`visionops ARGS` with the token of `studio` (or `token`): exit code and output, never a
    traceback."""
    env = {"VISIONOPS_LABEL_STUDIO_TOKEN": studio.token if token is None else token}
    get_settings.cache_clear()  # the token is read from the environment of this invocation
    try:
        result = runner.invoke(app, [str(a) for a in args], env=env)
    finally:
        get_settings.cache_clear()
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    return result.exit_code, result.output


def ls_export(studio: LabelStudio, batch: Path, project: str, **kw: str) -> tuple[int, str]:
    """`visionops label export BATCH --to label-studio` into `project`."""
    return ls_cli(studio, "label", "export", batch, "--to", "label-studio", "--url", studio.url,
                  "--project", project, **kw)  # fmt: skip


def ls_import(studio: LabelStudio, project: str, out: Path, *extra: str) -> tuple[int, str]:
    """`visionops label import --from label-studio` of `project` into `out`."""
    return ls_cli(studio, "label", "import", "--from", "label-studio", "--url", studio.url,
                  "--project", project, "--out", out, *extra)  # fmt: skip


def summary_json(output: str) -> dict:
    """The JSON summary a `label` command printed."""
    return json.loads(output[output.index("{") : output.rindex("}") + 1])


def root_boxes(root: Path) -> dict[str, list[tuple[int, list[float]]]]:
    """Image digest -> (class id in the root's class map, [x, y, w, h]) of every box."""
    class_map = build_class_map(open_vision(root))
    boxes: dict[str, list[tuple[int, list[float]]]] = {}
    for coco_file in sorted(root.glob("*/*/_annotations.coco.json")):
        product = coco_file.parts[-3]
        coco = json.loads(coco_file.read_text())
        categories = {c["id"]: c["name"] for c in coco["categories"]}
        for image in coco["images"]:
            assert (coco_file.parent / image["file_name"]).is_file()
            boxes[image["file_name"].split(".")[0]] = [
                (class_map.class_id(product, categories[a["category_id"]]), a["bbox"])
                for a in coco["annotations"]
                if a["image_id"] == image["id"]
            ]
    return boxes

"""Evaluation of the served ONNX model: outputs, MLflow logging, and agreement with COCOeval.

The session model (2 epochs) finds next to nothing on its own data, so the agreement test scores
it on labels made from its own detections (shifted, some dropped): a real, non-trivial mAP over
`detections.json` as the predictor's pre/post-processing produced it.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image
from typer.testing import CliRunner

from tests import headless_chromium
from tests.trained import ObservedTraining
from visionops.cli.app import app
from visionops.config import Settings, get_settings
from visionops.data.features import FEATURE_COLUMNS, read_image
from visionops.errors import DataError, ModelNotFound
from visionops.inference import Detector
from visionops.tracking import connect
from visionops.training.dataset import label_path, load_data_yaml
from visionops.training.evaluate import EvaluationResult, evaluate

runner = CliRunner()


def test_cli_evaluates_and_logs_everything_to_the_run(
    mlflow_settings: Settings, trained: ObservedTraining, tiny_data_yaml: Path, tmp_path: Path
):
    run_id = trained.result.run_id
    out = tmp_path / "eval"
    result = runner.invoke(
        app,
        ["evaluate", "--model", f"runs:/{run_id}/model", "--data", str(tiny_data_yaml),
         "--out", str(out)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "| mAP50 | mAP50-95 | precision | recall |" in result.output
    metrics = json.loads((out / "metrics.json").read_text())
    names = load_data_yaml(tiny_data_yaml).names
    assert metrics["images"] == 8 and metrics["run_id"] == run_id
    assert set(metrics["per_class"]) == set(names)
    matrix = np.array(metrics["confusion_matrix"]["matrix"])
    assert matrix.shape == (len(names) + 1, len(names) + 1)
    assert metrics["confusion_matrix"]["labels"] == [*names, "background"]
    ground_truth = json.loads((out / "ground_truth.json").read_text())
    assert len(ground_truth["images"]) == 8
    assert sum(metrics["per_class"][n]["instances"] for n in names) == len(
        ground_truth["annotations"]
    )
    assert isinstance(json.loads((out / "detections.json").read_text()), list)
    reference = pd.read_parquet(out / "reference_features.parquet")
    assert len(reference) == 8 and set(FEATURE_COLUMNS) <= set(reference.columns)
    assert reference["file_name"].str.startswith("images/val/").all()
    # Thumbnails of six of the images the table describes, spread over the split (drift pages).
    files = list(reference["file_name"])
    spread = [files[i] for i in (0, 1, 2, 4, 5, 6)]  # 6 of 8, evenly spaced
    thumbnails = sorted((out / "reference_images").iterdir())
    assert [p.name for p in thumbnails] == [
        f"{i:02d}-{Path(n).with_suffix('').as_posix().replace('/', '__')}.jpg"
        for i, n in enumerate(spread)
    ]
    for thumbnail in thumbnails:
        assert max(read_image(thumbnail).shape[:2]) == 96

    run = connect(mlflow_settings).client.get_run(run_id)
    assert run.data.metrics["eval.map50_95"] == pytest.approx(metrics["map50_95"])
    assert run.data.tags["visionops.eval.data_hash"] == metrics["data_hash"]
    assert run.data.tags["visionops.eval.data_yaml"] == str(tiny_data_yaml)
    logged = {f.path for f in connect(mlflow_settings).client.list_artifacts(run_id, "evaluation")}
    assert {
        f"evaluation/{n}"
        for n in ("detections.json", "ground_truth.json", "metrics.json", "report.md",
                  "report.html", "reference_features.parquet", "reference_images")
    } <= logged  # fmt: skip


def _pseudo_labeled(data_yaml: Path, model_dir: Path, root: Path, *, relabel: int = 0) -> Path:
    """A copy of the val split whose labels are the model's own top detections, perturbed
    (with `relabel`, the first label of every `relabel`-th image gets another class)."""
    dataset = load_data_yaml(data_yaml)
    detector = Detector.from_model_dir(model_dir)
    rng = np.random.default_rng(0)
    for number, image_path in enumerate(dataset.images("val")):
        relative = image_path.relative_to(dataset.root)
        target = root / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.symlink_to(image_path)
        image = read_image(image_path)
        height, width = image.shape[:2]
        (found,) = detector.detect([image], conf=0.001)
        rows = []
        for box, cls in zip(found.boxes[:4], found.class_ids[:4], strict=True):
            if rng.uniform() < 0.2:
                continue  # some detections become false positives
            size = np.tile(box[2:] - box[:2], 2)
            x1, y1, x2, y2 = box + rng.normal(0, 0.06, 4) * size  # IoUs spread over 0.5..1
            if relabel and number % relabel == 0 and not rows:
                cls = (cls + 1) % len(dataset.names)
            rows.append(
                f"{cls} {(x1 + x2) / 2 / width} {(y1 + y2) / 2 / height} "
                f"{(x2 - x1) / width} {(y2 - y1) / height}"
            )
        if rng.uniform() < 0.3:  # an object the model does not see
            rows.append(f"{rng.integers(0, len(dataset.names))} 0.5 0.5 0.3 0.2")
        label = label_path(target)
        label.parent.mkdir(parents=True, exist_ok=True)
        label.write_text("\n".join(rows) + "\n")
    data = {"path": str(root), "train": "images/val", "val": "images/val"}
    out = root / "data.yaml"
    out.write_text(yaml.safe_dump({**data, "names": dict(enumerate(dataset.names))}))
    return out


def test_map_agrees_with_pycocotools_on_the_written_detections(
    trained: ObservedTraining, tiny_data_yaml: Path, tmp_path: Path
):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    data = _pseudo_labeled(tiny_data_yaml, trained.result.model_dir, tmp_path / "pseudo")
    result = evaluate(trained.result.model_dir, data, log_run=False, out_dir=tmp_path / "eval")
    with contextlib.redirect_stdout(io.StringIO()):
        truth = COCO(str(result.files["ground_truth"]))
        coco = COCOeval(truth, truth.loadRes(str(result.files["detections"])), "bbox")
        coco.evaluate()
        coco.accumulate()
        coco.summarize()
    assert 0.05 < coco.stats[0] < coco.stats[1] < 0.95, coco.stats  # a real score, not 0 == 0
    # README: "a test holds it to COCOeval (equal to 1e-9)", on the very detections.json.
    assert result.metrics.map50_95 == pytest.approx(coco.stats[0], abs=1e-9)
    assert result.metrics.map50 == pytest.approx(coco.stats[1], abs=1e-9)
    written = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert written["map50_95"] == pytest.approx(coco.stats[0], abs=1e-9)


def test_a_dataset_with_other_classes_is_refused(
    trained: ObservedTraining, tiny_data_yaml: Path, tmp_path: Path
):
    source = load_data_yaml(tiny_data_yaml)
    other = tmp_path / "other.yaml"
    other.write_text(
        yaml.safe_dump(
            {"path": str(source.root), "train": "images/train", "val": "images/val",
             "names": {i: f"other/{i}" for i in range(len(source.names))}}
        )
    )  # fmt: skip
    with pytest.raises(DataError, match="classes differ"):
        evaluate(trained.result.model_dir, other, log_run=False)


def test_an_unknown_model_is_a_clear_error(mlflow_settings: Settings, tiny_data_yaml: Path):
    with pytest.raises(ModelNotFound, match="no-such-model"):
        evaluate("models:/no-such-model@champion", tiny_data_yaml)
    result = runner.invoke(
        app, ["evaluate", "--model", "models:/no-such-model/3", "--data", str(tiny_data_yaml)]
    )
    assert result.exit_code == 1 and "not found" in result.output


SECTIONS = ("summary", "per-class", "pr-curves", "confusion", "per-product", "gallery",
            "gallery-missed", "gallery-false-alarms", "gallery-wrong-class")  # fmt: skip


@pytest.fixture(scope="module")
def html_report(
    trained: ObservedTraining, tiny_data_yaml: Path, tmp_path_factory: pytest.TempPathFactory
) -> EvaluationResult:
    """A real evaluation whose pictures all have something to show: labels made from the model's
    own detections (some moved, dropped, given another class, some objects it does not see),
    scored at the evaluation's own confidence, where all its detections count."""
    root = tmp_path_factory.mktemp("report")
    data = _pseudo_labeled(tiny_data_yaml, trained.result.model_dir, root / "pseudo", relabel=2)
    settings = get_settings().model_copy(update={"serve_conf": 0.001})
    return evaluate(
        trained.result.model_dir, data, log_run=False, out_dir=root / "eval", settings=settings
    )


def _data_uris(page: str) -> list[str]:
    return re.findall(r'<img src="(data:[^"]+)"', page)


def test_every_evaluation_writes_a_self_contained_html_report(
    html_report: EvaluationResult, trained: ObservedTraining
):
    page = html_report.files["report_html"].read_text()
    assert html_report.files["report_html"] == html_report.out_dir / "report.html"
    # A model directory not looked up in the registry: a candidate, named by its training run.
    candidate = f"unregistered candidate (run {trained.result.run_id})"
    assert f"<h1>Evaluation of {candidate}</h1>" in page
    assert html_report.markdown().startswith(f"## Evaluation of {candidate} on `val`")
    for section in SECTIONS:
        assert f'id="{section}"' in page, section
    # Offline by construction: no URL of any kind, no script; every picture is embedded.
    text = re.sub(r'src="data:[^"]+"', 'src=""', page)
    assert not re.search(r"https?:|//[a-z]|<script|<link|@import|url\(", text, re.IGNORECASE)
    assert re.findall(r"<img [^>]*src=\"([^\"]*)\"", page) == _data_uris(page)
    uris = _data_uris(page)
    gallery = page[page.index('id="gallery"') :]
    assert len(_data_uris(gallery)) >= 3  # missed, false alarms and wrong class each have one
    assert "None on this data" not in gallery
    for uri in uris:  # every picture decodes, and is not one flat colour
        header, payload = uri.split(",", 1)
        assert header in ("data:image/png;base64", "data:image/jpeg;base64")
        with Image.open(io.BytesIO(base64.b64decode(payload))) as image:
            pixels = np.asarray(image.convert("RGB"))
        assert pixels.shape[0] > 100 and pixels.shape[1] > 100 and pixels.std() > 5
    m = html_report.metrics
    for name, n in m.instances.items():  # the per-class table shows what metrics.json holds
        ap = m.ap50_95[name]
        assert f"<td>{name}</td><td>{n}</td>" in page
        assert ap is None or f"<td>{ap:.4f}</td>" in page


def test_the_report_agrees_with_the_metrics_it_draws(html_report: EvaluationResult):
    m = html_report.metrics
    # Each precision-recall curve is the one whose mean is the class's AP50.
    assert set(m.pr_curves) == {n for n, v in m.ap50.items() if v is not None}
    for name, curve in m.pr_curves.items():
        assert len(curve) == 101 and np.mean(curve) == pytest.approx(m.ap50[name], abs=1e-12)
    # Per product: the images and instances add up, and the error counts are the confusion
    # matrix's background column (missed), row (false alarms) and off-diagonal (wrong class).
    written = json.loads(html_report.files["metrics"].read_text())["per_product"]
    assert set(written) == {"Cable", "Screw"}
    assert sum(p["images"] for p in written.values()) == html_report.images
    assert sum(p["instances"] for p in written.values()) == sum(m.instances.values())
    matrix = np.array(m.confusion)
    classes = matrix[:-1, :-1]
    assert sum(p["missed"] for p in written.values()) == matrix[:-1, -1].sum()
    assert sum(p["false_alarms"] for p in written.values()) == matrix[-1, :-1].sum()
    wrong = classes.sum() - np.trace(classes)
    assert sum(p["wrong_class"] for p in written.values()) == wrong > 0
    for product in html_report.products:  # the same scoring, restricted to that product's images
        assert f"<td>{product.product}</td><td>{product.images}</td>" in (
            html_report.files["report_html"].read_text()
        )
    assert "| product | images | mAP50 | mAP50-95 |" in html_report.files["report"].read_text()


@headless_chromium.needs_chromium
def test_the_report_renders_in_headless_chromium_without_reaching_out(
    html_report: EvaluationResult, tmp_path: Path
):
    page = html_report.files["report_html"]
    rendered = headless_chromium.render(page, tmp_path / "chromium")
    assert rendered.external() == []
    for section in SECTIONS:
        assert f'id="{section}"' in rendered.dom, section
    assert len(re.findall(r"<img ", rendered.dom)) == len(_data_uris(page.read_text()))
    shot = rendered.screenshot
    assert shot.shape[0] > 1000 and len(np.unique(shot.reshape(-1, 3), axis=0)) > 200
    assert (shot < 250).any(axis=2).mean() > 0.05  # not a blank page: text, plots, images


@headless_chromium.needs_chromium
def test_the_chromium_check_sees_a_page_that_reaches_out(tmp_path: Path):
    page = tmp_path / "page.html"
    page.write_text('<html><body><img src="https://cdn.invalid/x.png"></body></html>')
    assert headless_chromium.render(page, tmp_path / "c", height=300).external() == [
        "https://cdn.invalid/x.png"
    ]


def _two_versions(settings: Settings, trained: ObservedTraining) -> str:
    """Versions 1 and 2 of this test's registered model, both made from the session's run."""
    client = connect(settings).client
    run = client.get_run(trained.result.run_id)
    name = settings.model_name
    client.create_registered_model(name)
    for _ in range(2):
        client.create_model_version(name, f"{run.info.artifact_uri}/model", run_id=run.info.run_id)
    return name


def test_compare_puts_two_versions_and_the_gates_decision_side_by_side(
    mlflow_settings: Settings, trained: ObservedTraining, tiny_data_yaml: Path, tmp_path: Path
):
    name = _two_versions(mlflow_settings, trained)
    client = connect(mlflow_settings).client
    before = client.get_run(trained.result.run_id).data
    out = tmp_path / "compare"
    result = runner.invoke(
        app,
        ["evaluate", "--compare", f"models:/{name}/1", f"models:/{name}/2",
         "--data", str(tiny_data_yaml), "--out", str(out)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert f"wrote {out / 'report.html'}" in result.output.replace("\n", "")
    markdown = (out / "report.md").read_text()
    assert f"| metric | {name} v1 | {name} v2 | change |" in markdown  # the versions, by name
    comparison = json.loads((out / "comparison.json").read_text())
    first = json.loads((out / "first" / "metrics.json").read_text())
    second = json.loads((out / "second" / "metrics.json").read_text())
    assert first["data_hash"] == second["data_hash"] == comparison["data_hash"]
    # The same weights twice: equal scores, and equal is not better for the gate.
    assert comparison["first"]["map50_95"] == first["map50_95"] == second["map50_95"]
    assert comparison["gate"]["promote"] is False
    reason = comparison["gate"]["reason"]
    assert reason.startswith("does not beat the champion") and "champion v1" in reason

    page = (out / "report.html").read_text()
    for section in ("gate", "summary", "per-class", "per-product", "pr-curves", "confusion"):
        assert f'id="{section}"' in page, section
    assert f"{name} v1 stays; {name} v2 would not be promoted" in page
    assert f"<h1>Evaluation of {name} v2</h1>" in (out / "second" / "report.html").read_text()
    assert reason.replace("&", "&amp;") in page
    for product in ("Cable", "Screw"):
        assert f"<td>{product}</td>" in page
    assert len(_data_uris(page)) == 4  # curves and heatmap of each version
    text = re.sub(r'src="data:[^"]+"', 'src=""', page)
    assert not re.search(r"https?:|<script|<link|url\(", text, re.IGNORECASE)
    assert (out / "first" / "report.html").is_file() and (out / "second" / "report.html").is_file()
    # A comparison is a look: the versions' run keeps the evaluation it had.
    after = client.get_run(trained.result.run_id).data
    assert (after.metrics, after.tags) == (before.metrics, before.tags)


def test_compare_with_a_missing_version_or_bad_data_says_so_in_one_line(
    mlflow_settings: Settings, trained: ObservedTraining, tiny_data_yaml: Path, tmp_path: Path
):
    name = _two_versions(mlflow_settings, trained)
    out = tmp_path / "compare"
    missing = runner.invoke(
        app,
        ["evaluate", "--compare", f"models:/{name}/1", f"models:/{name}/7",
         "--data", str(tiny_data_yaml), "--out", str(out)],
    )  # fmt: skip
    assert missing.exit_code == 1
    (line,) = [line for line in missing.output.splitlines() if line.startswith("error:")]
    assert "not found" in line and f"models:/{name}/7" in line, missing.output
    garbage = tmp_path / "data.yaml"
    garbage.write_bytes(b"names: [unclosed\n\x00\xff")
    unreadable = runner.invoke(
        app,
        ["evaluate", "--compare", f"models:/{name}/1", f"models:/{name}/2",
         "--data", str(garbage), "--out", str(out)],
    )  # fmt: skip
    assert unreadable.exit_code == 1
    (line,) = [line for line in unreadable.output.splitlines() if line.startswith("error:")]
    assert str(garbage) in line, unreadable.output
    assert not out.exists()  # nothing half-written
    both = runner.invoke(
        app,
        ["evaluate", "--model", f"models:/{name}/1", "--compare", f"models:/{name}/1",
         f"models:/{name}/2", "--data", str(tiny_data_yaml)],
    )  # fmt: skip
    assert both.exit_code == 2 and "either --model or --compare" in both.output

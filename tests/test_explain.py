"""Grad-CAM: the heatmap's maths, where it lands on real photos, the command and the report figure."""

import io
import re

import numpy as np
import pytest
from PIL import Image

from catsdogs.cli import main
from catsdogs.data.images import load_image
from catsdogs.inference import explain
from catsdogs.models import model as model_lib
from conftest import photo

CAT, DOG = ("test", "cats", 4200), ("test", "dogs", 4200)


@pytest.fixture(scope="module")
def explainer(lite0_run):
    return explain.Explainer(model_lib.load(lite0_run[0]))


def test_probabilities_are_the_models_own(explainer, lite0_run):
    model = model_lib.load(lite0_run[0])
    photos = [load_image(photo(*CAT)), load_image(photo(*DOG))]
    batch = np.stack([explainer.prepare(p) for p in photos])
    direct = [model.predict(p[None].astype("float32"), verbose=0) for p in photos]
    outputs = explainer.predict(batch)
    for name in ("probabilities", "in_distribution_score"):  # the open-set score too
        np.testing.assert_allclose(outputs[name], np.concatenate([d[name] for d in direct]), atol=1e-5)


def test_heatmaps_of_the_two_classes_split_the_evidence(explainer):
    # One logit z: the cat score is -z, the dog score z, so their Grad-CAM weights are opposite and
    # the two maps (positive parts of opposite sums) never overlap.
    batch = explainer.prepare(load_image(photo(*DOG)))[None]
    cats, dogs = explainer.heatmaps(np.concatenate([batch, batch]), [0, 1])
    side = -(-explainer.info.image_size // 32)  # Lite0's last block has stride 32
    assert dogs.shape == (side, side) and dogs.dtype == np.float32
    assert dogs.max() == pytest.approx(1.0) and dogs.min() >= 0
    assert not np.any((cats > 0) & (dogs > 0))
    # In a batch each photo is explained on its own: same map as alone.
    np.testing.assert_allclose(explainer.heatmaps(batch, [1])[0], dogs, atol=1e-4)


@pytest.mark.parametrize("animal", [CAT, DOG], ids=["cat", "dog"])
def test_the_heatmap_sits_on_the_animal(explainer, animal):
    # The photo beside an equally large grey area, then mirrored: the map must follow the animal.
    pixels = load_image(photo(*animal))
    height, width = pixels.shape[:2]
    canvas = np.full((height, 2 * width, 3), 128, np.uint8)
    canvas[:, :width] = pixels
    for image, animal_on_the_left in ((canvas, True), (canvas[:, ::-1], False)):
        explanation = explainer.explain(image)
        assert explanation.label == animal[1] == explanation.explained
        columns = explanation.heatmap.shape[1]  # 7: the middle one sees both halves, so it is left out
        left, right = explanation.heatmap[:, :columns // 2], explanation.heatmap[:, (columns + 1) // 2:]
        share = left.sum() / (left.sum() + right.sum())
        assert (share if animal_on_the_left else 1 - share) > 0.8


def test_overlay_and_png_keep_the_photos_proportions():
    heatmap = np.zeros((7, 7), np.float32)
    heatmap[3, 3] = 1.0
    pixels = np.full((300, 400, 3), 200, np.uint8)
    drawn = explain.overlay(pixels, heatmap)
    assert drawn.shape == (300, 400, 3) and drawn.dtype == np.uint8
    assert not np.array_equal(drawn[150, 200], drawn[0, 0])  # hot centre, cold corner
    png = Image.open(io.BytesIO(explain.heatmap_png(heatmap, 4000, 3000)))
    assert png.size == (320, 240) and png.mode == "RGBA"


def test_explain_command_writes_the_overlay(lite0_run, tmp_path, capsys):
    cat = photo(*CAT)
    out = tmp_path / "cat-explained.png"
    assert main(["explain", str(lite0_run[0]), str(cat), "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert re.search(r": cats [01]\.\d{4};", printed) and "Grad-CAM of 'cats'" in printed and str(out) in printed
    written = np.asarray(Image.open(out))
    original = load_image(cat)
    assert written.shape == original.shape and not np.array_equal(written, original)

    assert main(["explain", str(lite0_run[0]), str(cat), "-o", str(tmp_path / "dogs.png"), "--class", "dogs"]) == 0
    assert "Grad-CAM of 'dogs'" in capsys.readouterr().out


def test_explain_command_errors_are_clear(lite0_run, tmp_path, capsys):
    assert main(["explain", str(lite0_run[0]), str(photo(*CAT)), "--class", "horses"]) == 2
    assert "unknown class 'horses'" in capsys.readouterr().err
    (tmp_path / "notes.jpg").write_text("not a photo")
    assert main(["explain", str(lite0_run[0]), str(tmp_path / "notes.jpg")]) == 2
    assert "not an image" in capsys.readouterr().err


def test_report_shows_gradcam_of_the_top_mistakes(lite0_run):
    run_dir, metrics, _ = lite0_run
    assert metrics["errors"] > 0  # a run of 100 photos per class makes a few
    figure = Image.open(run_dir / "gradcam.png")
    assert figure.size[0] > 600
    assert 'src="gradcam.png"' in (run_dir / "report.html").read_text()

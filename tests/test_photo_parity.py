"""Large photos get the same probabilities from every path that runs a model on them: predict,
Ray scoring and extraction, serve, explain, local extraction and the report's Grad-CAM. Each
prepares a photo through one owner (`inference.preprocess`); on photos of 12 megapixels with
fine detail, a path that decodes them otherwise (at full size) was up to 0.09 apart in probability."""

import base64
import pathlib

import httpx
import numpy as np
import pytest
from PIL import Image

import catsdogs
from catsdogs.inference.preprocess import load_photo
from conftest import ServerThread, photo

pytestmark = pytest.mark.slow

# (class, number of a real test photo the model is unsure of, size, format): landscape JPEG, portrait PNG.
LARGE = (("dogs", 4098, (4000, 3000), "JPEG"), ("cats", 4047, (3000, 4000), "PNG"))
TOLERANCE = 1e-4


def large_photo(cls, number, size, fmt, path):
    """A real photo enlarged to `size` with fine stripes over it, finer than a photo decoded near the
    model's input size keeps: decoding policies that differ give visibly different pixels."""
    width, height = size
    pixels = np.asarray(Image.open(photo("test", cls, number)).convert("RGB").resize(size, Image.BICUBIC), np.float32)
    y, x = np.mgrid[0:height, 0:width]
    stripes = 40 * np.sin(2 * np.pi * (x / 2.3 + y / 5.1))
    Image.fromarray(np.clip(pixels + stripes[..., None], 0, 255).astype(np.uint8)).save(path, fmt, quality=95)
    return str(path)


@pytest.fixture(scope="module")
def large_photos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("large")
    return [large_photo(cls, number, size, fmt, folder / f"{cls}.{number}.{fmt.lower()}")
            for cls, number, size, fmt in LARGE]


@pytest.fixture(scope="module")
def predicted(lite0_run, large_photos):
    """runtime -> path -> probabilities, from `catsdogs.load(run, runtime).predict`: the run's own
    runtime (its int8 ONNX backbone) and the Keras model, which Grad-CAM and Ray's extraction run."""
    return {runtime: {p.path: p.probabilities for p in catsdogs.load(lite0_run[0], runtime).predict(large_photos)}
            for runtime in (None, "keras")}


def assert_same_probabilities(got, expected):
    """`got` and `expected`: path -> class -> probability."""
    assert sorted(got) == sorted(expected)
    for path, probabilities in expected.items():
        assert got[path] == pytest.approx(probabilities, abs=TOLERANCE), path


def probabilities_from_features(model, features):
    """path -> class -> probability, from an extractor's features of each path through the model's head."""
    from catsdogs.models import model as model_lib

    outputs = model_lib.parts(model).outputs_from_features(np.stack(list(features.values())))
    return {path: model_lib.probabilities_by_class(model_lib.describe(model).class_names, p)
            for path, p in zip(features, np.asarray(outputs["probabilities"]))}


def test_large_photos_are_decoded_near_the_models_input_size(lite0_run, large_photos):
    size = catsdogs.load(lite0_run[0]).info.image_size
    # JPEG decoded at 1/4 by the decoder itself; PNG shrunk by 7 (box averaging): each side still >= size.
    assert [load_photo(path, size).shape for path in large_photos] == [(750, 1000, 3), (572, 429, 3)]


def test_ray_scores_and_extracts_large_photos_as_predict_does(lite0_run, large_photos, predicted, tmp_path):
    pytest.importorskip("ray", reason="the [ray] extra is not installed: pip install 'catsdogs[ray]'")
    pytest.importorskip("pyarrow", reason="the [ray] extra is not installed: pip install 'catsdogs[ray]'")
    import pyarrow.parquet

    from catsdogs.engine.ray.cluster import connect
    from catsdogs.engine.ray.features import extract_features
    from catsdogs.engine.ray.scoring import predict_to_parquet
    from catsdogs.models import model as model_lib
    from catsdogs.store.feature_cache import FeatureCache, cache_id

    run_dir = lite0_run[0]
    model = catsdogs.load(run_dir, "keras").model
    extractor = model_lib.parts(model).extractor
    ray = connect(num_cpus=2)
    try:
        predict_to_parquet(run_dir, large_photos, tmp_path / "scores", workers=1)
        cache = FeatureCache(str(tmp_path / "features"), "ray")
        hashes = [f"large-{i}" for i in range(len(large_photos))]
        extract_features(extractor, model_lib.compute_precision(model), large_photos, hashes, cache, workers=1)
    finally:
        ray.shutdown()

    rows = pyarrow.parquet.read_table(tmp_path / "scores").to_pylist()
    assert_same_probabilities({row["path"]: {cls: row[f"p_{cls}"] for cls in ("cats", "dogs")} for row in rows},
                              predicted[None])
    features = {path: cache.features[cache_id(digest, "original")] for path, digest in zip(large_photos, hashes)}
    assert_same_probabilities(probabilities_from_features(model, features), predicted["keras"])


def test_local_extraction_sees_large_photos_as_predict_does(lite0_run, large_photos, predicted, tmp_path):
    from catsdogs.inference.features import cached_features
    from catsdogs.models import model as model_lib
    from catsdogs.store.feature_cache import FeatureCache

    model = catsdogs.load(lite0_run[0], "keras").model
    hashes = [f"large-{i}" for i in range(len(large_photos))]
    outputs = cached_features(model_lib.parts(model).extractor, large_photos, hashes,
                              FeatureCache(str(tmp_path / "features"), "local"), batch_size=2)
    assert outputs.ok.all()
    features = dict(zip(large_photos, outputs.values[0]))
    assert_same_probabilities(probabilities_from_features(model, features), predicted["keras"])


def test_serve_answers_large_photos_as_predict_does(lite0_run, large_photos, predicted):
    from catsdogs.apps.serve.app import create_app, load_served_model
    from catsdogs.config.serve import ServeSettings

    classifier, name, metrics = load_served_model(lite0_run[0])
    body = {"instances": [{"b64": base64.b64encode(pathlib.Path(path).read_bytes()).decode()} for path in large_photos]}
    with ServerThread(create_app(classifier, name, metrics, ServeSettings())) as url:
        response = httpx.post(f"{url}/v1/models/{name}:predict", json=body, timeout=120)
    assert response.status_code == 200, response.text
    answers = response.json()["predictions"]  # the output tensors: probabilities in the order of the classes
    assert_same_probabilities({path: dict(zip(classifier.classes, answer["probabilities"]))
                               for path, answer in zip(large_photos, answers)}, predicted[None])


def test_explain_and_the_reports_figures_see_large_photos_as_predict_does(lite0_run, large_photos, predicted,
                                                                          tmp_path):
    from catsdogs.evaluation.figures import plot_gradcam, plot_top_losses
    from catsdogs.inference.explain import explain_photo

    classifier = catsdogs.load(lite0_run[0], "keras")
    explained, drawn = {}, {}
    for i, path in enumerate(large_photos):
        explanation, output = explain_photo(classifier.model, path, str(tmp_path / f"{i}.png"))
        explained[path] = explanation.probabilities
        drawn[path] = (explanation.label, np.asarray(Image.open(output)))
    assert_same_probabilities(explained, predicted["keras"])

    # The report's Grad-CAM of the same photos: the same pixels and heatmap as `catsdogs explain` drew.
    rows = [{"path": path, "predicted": label, "true": "?", "probability": predicted["keras"][path][label]}
            for path, (label, _) in drawn.items()]
    figure = plot_gradcam(rows, classifier.explainer())
    for ax, path in zip(figure.axes, large_photos):
        shown = np.asarray(ax.images[0].get_array())
        assert shown.shape == drawn[path][1].shape, path
        assert np.abs(shown.astype(int) - drawn[path][1]).max() <= 2, path  # heatmaps within float rounding
    # The figures that only show photos decode them near the model's input size too.
    size = classifier.info.image_size
    shown = plot_top_losses([{**rows[1], "label_looks_wrong": False}], image_size=size).axes[0].images[0]
    assert np.asarray(shown.get_array()).shape == load_photo(rows[1]["path"], size).shape

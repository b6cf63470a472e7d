"""`catsdogs bench` in its quick mode: it runs, measures what it says, and reports sane numbers."""

import json

from catsdogs import bench
from catsdogs.cli import main
from conftest import link_photos


def test_quick_bench_reports_speed_flops_peak_and_memory(tmp_path, capsys):
    photos = tmp_path / "photos"
    link_photos(photos, "test", "cats", range(4001, 4013))
    out = tmp_path / "bench.json"
    assert main(["bench", "--backbone", "efficientnet_lite0", "--precision", "float32", "--batch-sizes", "2,4",
                 "--images", "12", "--image-size", "224", "--data", str(photos), "--quick", "--output", str(out)]) == 0
    table = capsys.readouterr().out
    assert "efficientnet_lite0" in table and "GFLOP/s" in table and "12 photos from" in table
    report = json.loads(out.read_text())
    assert report["peak_gflops"]["float32"] > 10 and report["machine"]["usable_cores"] >= 1
    (result,) = report["results"]
    assert (result["backbone"], result["image_size"], result["precision"], result["weights"]) == (
        "efficientnet_lite0", 224, "float32", "imagenet")
    assert 0.7 < result["gflop_per_image"] < 0.85  # EfficientNet-Lite0: about 0.39 billion multiply-adds
    assert 100 < result["peak_rss_mb"] < 8000
    assert [row["batch_size"] for row in result["rows"]] == [2, 4]
    for row in result["rows"]:
        assert row["forward"] > 1 and row["from_files"] > 1 and row["from_files_total"] > 0
        assert row["gflops"] == row["forward"] * result["gflop_per_image"] and row["percent_of_peak"] > 0


def test_bench_runs_offline_resnet50_on_random_weights_and_says_why(tmp_path, monkeypatch):
    from keras.src.applications import resnet
    from keras.src.backend import config

    monkeypatch.setattr(config, "_KERAS_DIR", str(tmp_path))  # nothing cached
    monkeypatch.setattr(resnet, "BASE_WEIGHTS_PATH", "http://127.0.0.1:9/")  # nothing listens there
    extractor, weights, why = bench.extractor_with_available_weights("resnet50", "float32")
    assert weights == "random" and "ImageNet weights are not in the Keras cache" in why
    assert extractor.output_shape == (None, 2048)


def test_synthetic_photos_and_unknown_backbones(tmp_path):
    paths = bench.synthetic_photos(tmp_path, 3)
    assert len(paths) == 3 and all(p.endswith(".jpg") for p in paths)
    from catsdogs.images import load_image

    assert load_image(paths[0]).shape == (375, 500, 3)
    assert main(["bench", "--backbone", "vgg16", "--quick"]) == 2


def test_an_ensemble_is_measured_as_one_extractor_costing_its_members_together(tmp_path, capsys):
    from catsdogs.backbones import build_feature_extractor

    ensemble = "efficientnet_lite0+efficientnet_lite1"
    out = tmp_path / "bench.json"
    assert main(["bench", "--backbone", ensemble, "--precision", "float32", "--batch-sizes", "4", "--images", "12",
                 "--image-size", "96", "--quick", "--output", str(out)]) == 0
    assert f"{ensemble} float32" in capsys.readouterr().out  # its own column, however long the name
    (result,) = json.loads(out.read_text())["results"]
    members = sum(bench.count_flops(build_feature_extractor(name, "random", 96), 96) for name in ensemble.split("+"))
    assert result["backbone"] == ensemble and abs(result["gflop_per_image"] - members / 1e9) < 0.01 * members / 1e9

"""`catsdogs bench` in its quick mode: it runs every runtime, measures what it says, and reports sane numbers."""

import json

import pytest

from catsdogs.cli import main
from catsdogs.config.choices import BENCH_RUNTIMES
from catsdogs.engine import bench
from catsdogs.errors import ConfigError
from conftest import link_photos, photo


def test_quick_bench_reports_every_runtime_against_the_peak_of_its_precision(tmp_path, capsys):
    import importlib.util

    photos = tmp_path / "photos"
    link_photos(photos, "test", "cats", range(4001, 4013))
    out = tmp_path / "bench.json"
    assert main(["bench", "--backbone", "efficientnet_lite0", "--precisions", "float32,int8", "--batch-sizes", "2,4",
                 "--images", "12", "--image-size", "224", "--data", str(photos), "--quick", "--output", str(out)]) == 0
    table = capsys.readouterr().out
    assert "efficientnet_lite0" in table and "GFLOP/s" in table and "12 photos from" in table
    report = json.loads(out.read_text())
    machine = report["machine"]
    assert machine["usable_cores"] >= 1 and machine["cpu_kind"] in table
    assert set(machine["cpu_flags"]) == set(bench.CPU_FLAGS_OF_INTEREST) and "avx2" in table
    assert machine["blas"]["architecture"] and f"{machine['blas']['architecture']} kernel" in table
    # A peak per precision measured, each by a kernel other than the ones measured against it.
    assert set(report["peak_gflops"]) == {"float32", "int8"}  # no Keras bfloat16 asked for: no bfloat16 peak
    assert report["peak_gflops"]["float32"] > 10 and report["peak_gflops"]["int8"] > 10
    assert "numpy sgemm" in report["peak_measured_by"]["float32"] and "MatMulInteger" in report["peak_measured_by"]["int8"]
    # Every runtime side by side, in one table with a runtime column.
    openvino = importlib.util.find_spec("openvino") is not None
    expected = {("keras", "float32"), ("onnx", "float32"), ("onnx", "int8")} | (
        {("openvino", "float32")} if openvino else set())
    assert {(r["runtime"], r["precision"]) for r in report["results"]} == expected
    for runtime, precision in expected:
        assert f"{precision:<10}{runtime:<12}" in table
    if openvino:
        (result,) = [r for r in report["results"] if r["runtime"] == "openvino"]
        assert result["openvino_precision"] == "f32"  # the hint held: comparable with the other float32 runtimes
    else:
        assert "openvino is not installed" in table
    assert "calibration" in table  # int8 says what it was calibrated on
    (keras,) = [r for r in report["results"] if r["runtime"] == "keras"]
    assert (keras["backbone"], keras["image_size"], keras["precision"], keras["weights"]) == (
        "efficientnet_lite0", 224, "float32", "imagenet")
    assert 0.7 < keras["gflop_per_image"] < 0.85  # EfficientNet-Lite0: about 0.39 billion multiply-adds
    for result in report["results"]:
        assert result["gflop_per_image"] == keras["gflop_per_image"]  # the Keras float32 count for all
        assert result["image_size"] == 224 and 100 < result["peak_rss_mb"] < 8000
        assert [row["batch_size"] for row in result["rows"]] == [2, 4]
        peak = report["peak_gflops"][result["precision"]]
        for row in result["rows"]:
            assert row["forward"] > 1 and row["from_files"] > 1 and row["from_files_total"] > 0
            assert row["gflops"] == row["forward"] * result["gflop_per_image"]
            assert abs(row["percent_of_peak"] - 100 * row["gflops"] / peak) < 1e-9 and row["percent_of_peak"] > 0
    fastest = report["fastest_from_files"]["efficientnet_lite0"]
    assert (fastest["runtime"], fastest["precision"]) in expected and fastest["versus_keras_float32"] >= 1
    assert fastest["from_files"] == max(row["from_files"] for r in report["results"] for row in r["rows"])
    assert f"fastest from files, efficientnet_lite0: {fastest['runtime']} {fastest['precision']}" in table


def test_the_int8_peak_is_onnx_runtimes_integer_matrix_multiplication():
    assert bench.int8_gemm_gops(size=256, repeats=2) > 0


def test_cpu_kind_and_the_cli_runtimes():
    assert bench.cpu_kind({"avx2", "fma"}) == "AVX2+FMA"
    assert bench.cpu_kind({"avx2", "fma", "avx_vnni"}) == "AVX2+FMA, AVX-VNNI"
    assert bench.cpu_kind({"avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16"}) == "AVX-512, VNNI, bfloat16"
    assert bench.cpu_kind({"sse4_2"}) == "no AVX2+FMA"
    from catsdogs.cli import build_parser

    args = build_parser().parse_args(["bench", "--runtimes", ",".join(bench.RUNTIME_PRECISIONS)])
    assert args.runtimes == BENCH_RUNTIMES == tuple(bench.RUNTIME_PRECISIONS)  # the CLI's list is the bench's
    for wrong in ("tensorrt", "int8"):  # int8 is a precision, as everywhere else
        with pytest.raises(SystemExit) as exit_:
            main(["bench", "--runtimes", wrong, "--quick"])
        assert exit_.value.code == 2
    with pytest.raises(ConfigError, match="int8 is a precision"):
        bench.available_runtimes(["int8"])


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
    from catsdogs.data.images import load_image

    assert load_image(paths[0]).shape == (375, 500, 3)
    assert main(["bench", "--backbone", "vgg16", "--quick"]) == 2


def test_an_ensemble_is_measured_as_one_extractor_costing_its_members_together(tmp_path, capsys):
    from catsdogs.models.backbones import build_feature_extractor

    ensemble = "efficientnet_lite0+efficientnet_lite1"
    out = tmp_path / "bench.json"
    assert main(["bench", "--backbone", ensemble, "--precisions", "float32", "--batch-sizes", "4", "--images", "12",
                 "--image-size", "96", "--quick", "--output", str(out)]) == 0
    assert f"{ensemble} float32" in capsys.readouterr().out  # its own column, however long the name
    (result,) = json.loads(out.read_text())["results"]
    members = sum(bench.count_flops(build_feature_extractor(name, "random", 96), 96) for name in ensemble.split("+"))
    assert result["backbone"] == ensemble and abs(result["gflop_per_image"] - members / 1e9) < 0.01 * members / 1e9


def test_bench_from_files_times_the_function_train_extracts_with(tmp_path, monkeypatch):
    from catsdogs.engine.timing import files_rate
    from catsdogs.inference import features
    from catsdogs.store.feature_cache import FeatureCache

    calls = []
    extract = features.compute_features

    def recorded(forward, paths, *args, **kwargs):
        calls.append((forward, len(paths)))
        return extract(forward, paths, *args, **kwargs)

    monkeypatch.setattr(features, "compute_features", recorded)

    class Backbone:  # the mean colour as features: what runs is beside the point
        name, input_shape, output_shape = "mean", (None, 32, 32, 3), (None, 3)

        def __call__(self, images):
            return images.mean(axis=(1, 2))

    backbone = Backbone()
    paths = [photo("test", "cats", number) for number in range(4001, 4006)]
    rate = files_rate(backbone, paths, 32, batch_size=2)
    extracted = features.cached_features(backbone, paths, [f"digest-{n}" for n in range(5)],
                                         FeatureCache(str(tmp_path), "mean"), 2, forward=backbone)
    assert calls == [(backbone, 5), (backbone, 5)]  # bench, then train's extraction: one code path
    assert rate["images"] == 5 and rate["steady"] > 0 and rate["total"] > 0
    assert extracted.ok.all() and extracted.values.shape == (1, 5, 3)

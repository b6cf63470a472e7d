"""What README.md and docs/ promise: the commands, snippets and links they show are real (fast
checks, nothing trained), and the promises no other test ran end to end, each through the command
line or the library as a user meets it, on small slices of the real photos (symlinks, nothing copied)."""

import base64
import collections
import contextlib
import io
import json
import os
import re
import shlex

import httpx
import numpy as np
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from PIL import Image

import catsdogs
from catsdogs.cli import build_parser, main
from catsdogs.config.serve import API_KEY_ENV
from catsdogs.data.images import load_image
from catsdogs.evaluation.figures import save_figure
from catsdogs.utils.csvfiles import read_csv
from conftest import ROOT, link_photos, photo, real_dataset, serve_command

FAST = ["--backbone", "efficientnet_lite0", "--image-size", "96"]
# What every run directory holds (docs/run-directory.md; as in test_train.py).
RUN_FILES = {"config.json", "model.keras", "metrics.json", "predictions.csv", "splits.csv", "integrity.json",
             "grid.png", "confusion.png", "errors.png", "reliability.png", "report.html"}


README = ROOT / "README.md"
# The pages users read: the README and every page of docs/.
DOCS = [README, *sorted((ROOT / "docs").glob("*.md"))]
README_MAX_LINES = 200
# The README's two commands: set up and run the main job; run the tests (what .ci/run runs).
MAIN_COMMAND = "python3 -m venv .venv && .venv/bin/pip install -e . && .venv/bin/catsdogs train "
TEST_COMMAND = 'python3 -m venv .venv && .venv/bin/pip install -e ".[dev]" && .venv/bin/python -m pytest'
SHELL_LANGUAGES = ("", "bash", "sh", "shell", "console")
SHELL_OPERATORS = ("&&", "||", ";", "|", "&", "(", ")")


def code_blocks(text):
    """(language, body) of every fenced code block of a Markdown text."""
    return re.findall(r"^```(\w*)\n(.*?)^```", text, re.M | re.S)


def catsdogs_commands(doc):
    """The argument lists of every `catsdogs ...` command in a page's shell code blocks: continued
    lines joined, comments dropped, each command of a line (after &&, |, ;) on its own, whatever runs
    it (.venv/bin/catsdogs, an environment variable, /usr/bin/time)."""
    commands = []
    for language, body in code_blocks(doc.read_text()):
        if language not in SHELL_LANGUAGES:
            continue
        for line in body.replace("\\\n", " ").splitlines():
            lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
            lexer.whitespace_split, lexer.commenters = True, "#"
            words, segment = list(lexer), []
            for word in [*words, ";"]:
                if word not in SHELL_OPERATORS:
                    segment.append(word)
                    continue
                start = next((i for i, w in enumerate(segment) if os.path.basename(w) == "catsdogs"), None)
                if start is not None:
                    commands.append(segment[start + 1:])
                segment = []
    return commands


def test_the_readme_is_short_and_holds_the_two_commands_and_no_table_of_run_files():
    text = README.read_text()
    assert len(text.splitlines()) < README_MAX_LINES
    lines = [line for _, body in code_blocks(text) for line in body.splitlines()]
    assert any(line.startswith(MAIN_COMMAND) for line in lines), f"README must hold {MAIN_COMMAND}DATA"
    assert TEST_COMMAND in lines
    ci = (ROOT / ".ci" / "run").read_text()  # CI runs the README's test command
    assert re.search(r'^\.venv/bin/python -m pip install .*-e "\.\[dev\]"$', ci, re.M)
    assert re.search(r"^\.venv/bin/python -m pytest$", ci, re.M)
    assert "| file | what |" not in text  # the table of a run's files is docs/run-directory.md's alone


def test_the_readme_links_every_page_of_the_docs_under_documentation():
    section = README.read_text().split("\n## Documentation\n", 1)[1].split("\n## ", 1)[0]
    linked = set(re.findall(r"\]\((docs/[^)#]+)\)", section))
    assert linked == {f"docs/{page.name}" for page in DOCS[1:]}


@pytest.mark.parametrize("doc", DOCS, ids=lambda doc: doc.name)
def test_every_catsdogs_command_in_the_docs_parses(doc):
    parser = build_parser()
    for argv in catsdogs_commands(doc):
        stderr = io.StringIO()
        try:
            with contextlib.redirect_stderr(stderr):
                parser.parse_args(argv)
        except SystemExit as exit:
            assert exit.code == 0, f"{doc.name}: catsdogs {shlex.join(argv)}\n{stderr.getvalue()}"


def test_the_command_check_finds_commands_however_they_are_run(tmp_path):
    doc = tmp_path / "page.md"
    doc.write_text("```bash\nCATSDOGS_CACHE=/tmp/c /usr/bin/time -v .venv/bin/catsdogs train a \\\n    --tta  # cold\n"
                   "pip install -e . && catsdogs runs --json | head\n```\n```text\ncatsdogs not a command\n```\n")
    assert catsdogs_commands(doc) == [["train", "a", "--tta"], ["runs", "--json"]]


@pytest.mark.parametrize("doc", DOCS, ids=lambda doc: doc.name)
def test_every_python_snippet_imports(doc):
    for language, body in code_blocks(doc.read_text()):
        if language == "python":
            imports = "\n".join(line for line in body.splitlines() if re.match(r"(import|from) ", line))
            exec(imports, {})


def heading_anchors(doc):
    """The anchors GitHub gives a page's headings: lower case, punctuation dropped, spaces as hyphens."""
    text = re.sub(r"^```.*?^```", "", doc.read_text(), flags=re.M | re.S)
    anchors, seen = [], collections.Counter()
    for heading in re.findall(r"^#+ (.+)$", text, re.M):
        anchor = re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")
        anchors.append(f"{anchor}-{seen[anchor]}" if seen[anchor] else anchor)  # repeated headings: -1, -2...
        seen[anchor] += 1
    return anchors


@pytest.mark.parametrize("doc", DOCS, ids=lambda doc: doc.name)
def test_every_relative_link_and_anchor_resolves(doc):
    text = re.sub(r"^```.*?^```", "", doc.read_text(), flags=re.M | re.S)
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+:", target):
            continue  # http(s):, mailto:
        path, _, anchor = target.partition("#")
        page = (doc.parent / path).resolve() if path else doc
        assert page.exists(), f"{doc.name}: {target}: no such file"
        if anchor:
            assert anchor in heading_anchors(page), f"{doc.name}: {target}: no such heading in {page.name}"


@pytest.mark.parametrize("doc", DOCS, ids=lambda doc: doc.name)
def test_no_page_refers_to_issues_by_number(doc):
    assert not re.findall(r"\bissues? #?\d+", doc.read_text(), re.I)


def _splits(run_dir):
    """split -> sorted paths (relative to the data folder) of a run's splits.csv."""
    found = {}
    for row in read_csv(run_dir / "splits.csv"):
        found.setdefault(row["split"], []).append(row["path"])
    return {split: sorted(paths) for split, paths in found.items()}


def test_train_val_test_folders_train_with_the_validation_folder_as_the_validation_split(tmp_path, capsys):
    data, runs = tmp_path / "data", tmp_path / "runs"
    for cls in ("cats", "dogs"):
        link_photos(data / "train" / cls, "train", cls, range(601, 613))
        link_photos(data / "val" / cls, "train", cls, range(613, 618))
        link_photos(data / "test" / cls, "test", cls, range(4601, 4605))
    assert main(["train", str(data), *FAST, "--open-set", "none", "--runs-dir", str(runs), "--name", "layout"]) == 0
    expected = {split: sorted(str(p.relative_to(data)) for p in (data / split).rglob("*.jpg"))
                for split in ("train", "val", "test")}
    assert _splits(runs / "layout") == expected  # nothing carved out of train: val is the folder, as given
    metrics = json.loads((runs / "layout" / "metrics.json").read_text())
    assert (metrics["images"], metrics["validation"]["images"]) == (8, 10)
    assert json.loads((runs / "layout" / "config.json").read_text())["data_dir"] == str(data)


def test_exclude_leaves_listed_training_photos_out_and_never_test_photos(tmp_path, capsys):
    data, runs = real_dataset(tmp_path / "data", train_per_class=12, test_per_class=4), tmp_path / "runs"
    listing = tmp_path / "label-errors.txt"
    dog = data / "training_set" / "training_set" / "dogs" / "dog.5.jpg"
    listing.write_text(f"# confirmed label errors\ncat.3.jpg\n{dog}\ncat.4001.jpg\n")  # a name, a path, a test photo
    argv = ["train", str(data), *FAST, "--open-set", "none", "--runs-dir", str(runs), "--name", "excluded"]
    assert main([*argv, "--exclude", str(listing)]) == 0
    splits = _splits(runs / "excluded")
    training = [os.path.basename(p) for p in splits["train"] + splits["val"]]
    assert sorted(training) == sorted({f"{c}.{n}.jpg" for c in ("cat", "dog") for n in range(1, 13)}
                                      - {"cat.3.jpg", "dog.5.jpg"})
    assert "test_set/test_set/cats/cat.4001.jpg" in splits["test"] and len(splits["test"]) == 8
    assert json.loads((runs / "excluded" / "metrics.json").read_text())["images"] == 8
    assert json.loads((runs / "excluded" / "config.json").read_text())["exclude"] == str(listing)


def _blend(first, second, weight, side=256):
    """Two photos mixed pixel by pixel, `weight` of the second, as uint8 (what a PNG of it holds)."""
    a, b = (np.asarray(Image.fromarray(load_image(p)).resize((side, side)), np.float64) for p in (first, second))
    return np.round((1 - weight) * a + weight * b).astype(np.uint8)


def test_a_target_threshold_saved_in_the_model_decides_the_labels_of_catsdogs_predict(tmp_path, capsys):
    data, runs = real_dataset(tmp_path / "data", train_per_class=20, test_per_class=4), tmp_path / "runs"
    assert main(["train", str(data), *FAST, "--target", "precision:dogs=0.99", "--runs-dir", str(runs),
                 "--name", "target"]) == 0
    capsys.readouterr()
    classifier = catsdogs.load(runs / "target")
    threshold = classifier.info.threshold
    assert threshold == pytest.approx(json.loads((runs / "target" / "metrics.json").read_text())["threshold"])
    assert abs(threshold - 0.5) > 0.02, threshold  # a threshold of its own, or this test proves nothing

    # A photo the threshold decides otherwise than the most probable class: a cat blended into a dog
    # until p(dogs) lies halfway between 0.5 and the threshold (bisection on the blend's weight).
    cat, dog = photo("test", "cats", 4700), photo("test", "dogs", 4700)
    goal, low, high = (0.5 + threshold) / 2, 0.0, 1.0
    for _ in range(30):
        weight = (low + high) / 2
        p_dogs = classifier.predict_arrays(_blend(cat, dog, weight)[None])[0, 1]
        if abs(p_dogs - goal) < abs(threshold - 0.5) / 4:
            break
        low, high = (weight, high) if p_dogs < goal else (low, weight)
    else:
        pytest.fail(f"no blend has p(dogs) near {goal}")
    between = tmp_path / "between.png"
    Image.fromarray(_blend(cat, dog, weight)).save(between)

    photos = [str(between), str(photo("test", "cats", 4701)), str(photo("test", "dogs", 4701))]
    assert main(["predict", str(runs / "target"), *photos, "--json", "--no-reject"]) == 0
    rows = json.loads(capsys.readouterr().out)
    for row in rows:
        assert row["label"] == ("dogs" if row["probabilities"]["dogs"] >= threshold else "cats"), (row, threshold)
    most_probable = max(rows[0]["probabilities"], key=rows[0]["probabilities"].get)
    assert rows[0]["label"] != most_probable  # the threshold, not the larger probability, decided
    assert [row["label"] for row in rows[1:]] == ["cats", "dogs"]


def test_predict_tta_gives_the_mean_of_the_photo_and_its_mirror_image(lite0_run, tmp_path, capsys):
    run_dir = lite0_run[0]
    classifier = catsdogs.load(run_dir)
    side = classifier.info.image_size
    # Photos already at the model's input size (lossless PNG), so that mirroring before resizing, as
    # here, and after, as the model's views do, give the same pixels; the model computes in bfloat16
    # where the CPU has it, which turns a difference of rounding in the pixels into 1e-3 in probability.
    photos, pixels = [], []
    for cls, number in (("dogs", 4500), ("dogs", 4508), ("cats", 4510)):
        photos.append(tmp_path / f"{cls}-{number}.png")
        Image.fromarray(load_image(photo("test", cls, number))).resize((side, side)).save(photos[-1])
        pixels.append(load_image(photos[-1]))
    assert main(["predict", str(run_dir), *map(str, photos), "--tta", "--json", "--no-reject"]) == 0
    rows = json.loads(capsys.readouterr().out)
    shown, scores = classifier.predict_arrays(np.stack(pixels), with_scores=True)
    mirrored, mirrored_scores = classifier.predict_arrays(np.stack(pixels)[:, :, ::-1], with_scores=True)
    expected = (shown + mirrored) / 2
    np.testing.assert_allclose([[row["probabilities"][c] for c in classifier.classes] for row in rows], expected,
                               rtol=0, atol=1e-4)
    np.testing.assert_allclose([row["in_distribution_score"] for row in rows], (scores + mirrored_scores) / 2,
                               rtol=0, atol=1e-4)
    assert [row["label"] for row in rows] == [classifier.classes[i] for i in expected.argmax(axis=1)]
    # The mirror image changes the probabilities by far more than the tolerance: a real second view.
    assert np.abs(shown - mirrored).max() > 10 * 1e-4


def _shown_class(shown, class_names):
    """The one class a name shown in a figure stands for (the whole name, or its ends around "…")."""
    head, _, tail = shown.partition("…")
    matches = [name for name in class_names if name == shown or
               ("…" in shown and name.startswith(head) and name.endswith(tail) and len(name) > len(head + tail))]
    assert len(matches) == 1, f"{shown!r} stands for {matches} of {class_names}"
    return matches[0]


def test_forty_classes_with_long_names_train_and_every_figure_and_summary_names_each_class_readably(tmp_path, capsys):
    names = [f"a_very_long_class_name_number_{i:02d}" for i in range(40)]
    root = tmp_path / "data"
    for i, name in enumerate(names):  # cats and dogs, each split by photo number into six classes
        cls = ("cats", "dogs")[i % 2]
        link_photos(root / "train" / name, "train", cls, range(1000 + 7 * i, 1007 + 7 * i))
        link_photos(root / "test" / name, "test", cls, range(4800 + 2 * i, 4802 + 2 * i))
    assert main(["train", str(root), *FAST, "--runs-dir", str(tmp_path / "runs"), "--name", "many"]) == 0
    printed = capsys.readouterr().out
    run_dir = tmp_path / "runs" / "many"
    metrics = json.loads(open(f"{run_dir}/metrics.json").read())
    assert metrics["images"] == 80 and len(metrics["confusion_matrix"]) == 40 and set(metrics["per_class"]) == set(names)
    top = metrics["top_k_accuracy"]
    assert set(top) == {"3", "5"} and metrics["accuracy"] <= top["3"] <= top["5"] <= 1
    assert f"top-3 accuracy {top['3']:.4f}   top-5 accuracy {top['5']:.4f}" in printed
    confusion = np.array(metrics["confusion_matrix"])
    pairs = metrics["most_confused"]  # the largest off-diagonal cells, largest first, named
    assert pairs and [p["photos"] for p in pairs] == sorted((p["photos"] for p in pairs), reverse=True)
    assert pairs[0]["photos"] == (confusion - np.diag(np.diag(confusion))).max()
    assert all(confusion[names.index(p["true"]), names.index(p["predicted"])] == p["photos"] for p in pairs)
    assert f"most confused: {pairs[0]['true']} as {pairs[0]['predicted']} ({pairs[0]['photos']})" in printed
    assert "Most confused pairs" in open(f"{run_dir}/report.html").read()
    # predict --top-k: the N most probable classes of each photo, most probable first
    photo_path = str(photo("test", "cats", 4800))
    assert main(["predict", str(run_dir), photo_path, "--top-k", "3", "--json"]) == 0
    answer = json.loads(capsys.readouterr().out)[0]
    probabilities = sorted(answer["probabilities"].items(), key=lambda item: -item[1])[:3]
    assert [(t["label"], t["probability"]) for t in answer["top_k"]] == probabilities
    assert main(["predict", str(run_dir), photo_path, "--top-k", "3"]) == 0
    assert ", ".join(f"{label} {p:.4f}" for label, p in probabilities) in capsys.readouterr().out
    run = catsdogs.load(run_dir)
    assert run.classes == names
    evaluation = catsdogs.evaluate(run, root)
    written = set(os.listdir(run_dir))
    assert evaluation.mistakes()  # twenty classes of cats told apart by photo number: there are mistakes
    assert RUN_FILES | {"gradcam.png", "open_set.png", "rejections.png"} <= written
    for figure in sorted(name for name in written if name.endswith(".png")):
        with Image.open(f"{run_dir}/{figure}") as image:
            image.verify()  # a whole PNG, not a truncated one
            assert min(image.size) > 100, figure

    figure = evaluation.plot_confusion()
    save_figure(figure, tmp_path / "confusion.png")  # laid out as in the run directory
    ax = figure.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == names  # every name in full: the ends tell them apart
    assert [t.get_text() for t in ax.get_yticklabels()] == names
    renderer = FigureCanvasAgg(figure).get_renderer()
    inside = figure.bbox.padded(1)
    for label in ax.get_xticklabels() + ax.get_yticklabels():  # none cut off at the figure's edge
        box = label.get_window_extent(renderer)
        assert inside.x0 <= box.x0 and box.x1 <= inside.x1 and inside.y0 <= box.y0 and box.y1 <= inside.y1, \
            label.get_text()
    for ax in evaluation.plot_grid().axes:  # each title names its classes so that each is one class
        if ax.get_title():
            predicted, _, rest = ax.get_title().partition(" ")
            assert _shown_class(predicted, names)
            if "(true: " in rest:
                assert _shown_class(rest.split("(true: ")[1].rstrip(")"), names)


def test_serve_beyond_loopback_without_a_key_warns_in_its_log(lite0_run):
    with serve_command(lite0_run[0], "--host", "0.0.0.0", env={API_KEY_ENV: ""}) as (url, lines):
        log = "".join(lines)
        assert url.startswith("http://0.0.0.0:"), log
        assert "listening on 0.0.0.0 without an API key" in log and "--api-key" in log
        # Served to every network; this test only ever connects through loopback.
        port = url.rsplit(":", 1)[1]
        assert httpx.get(f"http://127.0.0.1:{port}/v1/models/lite0", timeout=30).status_code == 200


def test_serve_with_an_api_key_answers_401_without_it_and_200_with_it(lite0_run):
    key = "a-key-for-this-test"
    cat = photo("test", "cats", 4200).read_bytes()
    instances = {"instances": [{"b64": base64.b64encode(cat).decode()}]}
    with serve_command(lite0_run[0], "--api-key", key, "--name", "pets", env={API_KEY_ENV: ""}) as (url, lines):
        assert url.startswith("http://127.0.0.1:")
        assert "(API key required)" in "".join(lines) and "without an API key" not in "".join(lines)
        with httpx.Client(base_url=url, timeout=60) as client:
            assert client.get("/v1/models/pets").status_code == 401
            assert client.post("/predict", files={"files": ("cat.jpg", cat)}).status_code == 401
            assert client.post("/v1/models/pets:predict", json=instances,
                               headers={"Authorization": "Bearer wrong"}).status_code == 401
            assert client.get("/healthz").status_code == 200  # liveness stays open
            answer = client.post("/predict", files={"files": ("cat.jpg", cat)}, headers={"X-API-Key": key})
            assert answer.status_code == 200 and answer.json()["predictions"][0]["label"] == "cats"
            answer = client.post("/v1/models/pets:predict", json=instances, headers={"Authorization": f"Bearer {key}"})
            assert answer.status_code == 200 and answer.json()["predictions"][0]["probabilities"][0] > 0.5  # a cat
            assert client.get("/v1/models/pets", headers={"X-API-Key": key}).status_code == 200


def test_ci_sets_ci_so_that_missing_shared_data_fails_instead_of_skipping(monkeypatch, tmp_path):
    import conftest

    script = (conftest.ROOT / ".ci" / "run").read_text()
    assert re.search(r"^export CI=true$", script, re.M), "the CI script must set CI itself"
    assert script.index("export CI=true") < script.index("-m pytest")
    monkeypatch.setattr(conftest, "SHARED_DATA", tmp_path / "not-here")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="shared data not found"):
        conftest.photo("test", "cats", 4001)
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception):
        conftest.photo("test", "cats", 4001)

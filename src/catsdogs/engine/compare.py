"""Is run B really better than run A? Two runs compared on the same test photos, photo by photo.

`catsdogs runs --compare A B` (`compare_runs`): the settings that differ and the metrics side by
side (`store.runs.side_by_side`), then, where both runs were tested on the same photos (matched by
their paths inside the data folder, with the same labels), McNemar's exact test of their answers,
a paired bootstrap of their log-loss (`evaluation.statistics`), and the photos whose answer
changed. Runs tested on different photos are said not to be comparable, with how many photos
differ: a difference in their metrics would mix the models with the photos.

Only the runs' JSON files and predictions.csv are read (the CSV reader): TensorFlow is never imported.

    import catsdogs

    comparison = catsdogs.compare_runs("runs/a", "runs/b")  # -> dict: settings, metrics, "test"
    print(catsdogs.format_comparison(comparison))
"""

from catsdogs.errors import DataError
from catsdogs.evaluation import statistics
from catsdogs.store import runs
from catsdogs.store.run_dir import PREDICTIONS, RunDirectory

ALPHA = 0.05  # a difference is called distinguishable from chance below this p-value
COLUMNS = ("path", "true", "predicted")  # of predictions.csv, that the test needs ("loss" too, for log-loss)


def test_photos(run_dir) -> dict:
    """path -> the row of predictions.csv (true, predicted, loss as text) of each test photo of a run.

    Raises:
        DataError: naming the file: missing, unreadable, or without the columns the test needs.
    """
    run = RunDirectory(run_dir)
    rows = run.rows(PREDICTIONS)
    missing = [column for column in COLUMNS if rows and column not in rows[0]]
    if missing:
        raise DataError(f"{run.file(PREDICTIONS)}: no column {', '.join(missing)}")
    return {row["path"]: row for row in rows}


def _data_folders_note(path_a, path_b):
    """A note when the runs were trained on data folders of different names (their photos are matched by path)."""
    folders = [RunDirectory(path).config().get("data_dir") for path in (path_a, path_b)]
    if folders[0] == folders[1]:
        return None
    return (f"the runs name different data folders (A: {folders[0]}, B: {folders[1]}); their test photos are "
            f"matched by their paths inside them")


def _not_comparable(reason, **counts):
    return {"comparable": False, "reason": reason, **counts, "verdict": f"not comparable: {reason}"}


def paired_test(path_a, path_b) -> dict:
    """Whether two runs' test results differ by more than chance, on the photos both were tested on.

    Args:
        path_a, path_b: run directories.

    Returns:
        {"comparable": bool, "reason": why not (None when comparable), "note": about the data folders or None,
         "photos", "only_in_a", "only_in_b", "labels_differ": counts of test photos,
         "mcnemar": {"only_a_right", "only_b_right", "p_value", "method"},
         "log_loss": {"a", "b", "difference", "ci", "p_value", "method"} (None without per-photo losses),
         "changed": [{"path", "true", "a", "b"}] photos whose answer changed: those B gets right, then
         those A gets right, then those both get wrong,
         "verdict": what it all says, in words}; when not comparable, comparable, reason, the counts
        and verdict only.
    """
    a, b = (test_photos(path) for path in (path_a, path_b))
    shared = sorted(set(a) & set(b))
    counts = {"photos": len(shared), "only_in_a": len(set(a) - set(b)), "only_in_b": len(set(b) - set(a)),
              "labels_differ": sum(a[path]["true"] != b[path]["true"] for path in shared)}
    if counts["only_in_a"] or counts["only_in_b"] or counts["labels_differ"] or not shared:
        return _not_comparable(
            f"their test photos differ ({counts['only_in_a']} only in A, {counts['only_in_b']} only in B, "
            f"{counts['labels_differ']} labelled differently, {len(shared) - counts['labels_differ']} alike): a "
            f"difference in their metrics mixes the models with the photos. Test both on the same photos: train "
            f"on the same data with the same --seed and split settings (or a test folder, which fixes them)", **counts)
    a_right = [a[path]["predicted"] == a[path]["true"] for path in shared]
    b_right = [b[path]["predicted"] == b[path]["true"] for path in shared]
    result = {"comparable": True, "reason": None, "note": _data_folders_note(path_a, path_b), **counts,
              "mcnemar": {**statistics.mcnemar(a_right, b_right), "method": statistics.PAIRED_TEST},
              "log_loss": None}
    if all("loss" in rows[shared[0]] for rows in (a, b)):
        losses = [[float(rows[path]["loss"]) for path in shared] for rows in (a, b)]
        result["log_loss"] = {"a": sum(losses[0]) / len(shared), "b": sum(losses[1]) / len(shared),
                              **statistics.paired_bootstrap(*losses), "method": statistics.PAIRED_LOG_LOSS}
    changed = [{"path": path, "true": a[path]["true"], "a": a[path]["predicted"], "b": b[path]["predicted"]}
               for path in shared if a[path]["predicted"] != b[path]["predicted"]]
    result["changed"] = sorted(changed, key=lambda row: (row["b"] != row["true"], row["a"] != row["true"]))
    result["verdict"] = verdict(result)
    return result


def verdict(test) -> str:
    """What a comparable `paired_test` says, in words: accuracy (McNemar), then log-loss."""
    mcnemar, photos = test["mcnemar"], test["photos"]
    only_a, only_b, p = mcnemar["only_a_right"], mcnemar["only_b_right"], mcnemar["p_value"]
    if not only_a and not only_b:
        words = [f"A and B are right and wrong on the same photos, all {photos} of them: no difference in accuracy."]
    else:
        better = "B" if only_b > only_a else "A" if only_a > only_b else None
        words = [f"B is right on {only_b} test photos that A gets wrong, A on {only_a} that B gets wrong, of {photos}; "
                 f"McNemar's exact test: p = {p:.3g}: "
                 + (f"distinguishable from chance at the {ALPHA:.0%} level: {better} is more accurate."
                    if p < ALPHA and better else
                    f"not distinguishable from chance at the {ALPHA:.0%} level (a split this uneven comes from "
                    f"luck alone more often than 1 time in {round(1 / ALPHA)}).")]
    loss = test.get("log_loss")
    if loss:
        lower = "B" if loss["difference"] < 0 else "A"
        words.append(f"Log-loss B - A: {loss['difference']:+.4f} (95% interval {loss['ci'][0]:+.4f} to "
                     f"{loss['ci'][1]:+.4f}, paired bootstrap p = {loss['p_value']:.3g}): "
                     + (f"{lower}'s probabilities are better, beyond chance." if loss["p_value"] < ALPHA else
                        "not distinguishable from chance."))
    return " ".join(words)


def compare_runs(a, b, folder="runs") -> dict:
    """What differs between two runs (settings, main metrics), and whether their test results differ by more
    than chance on the same photos.

    Args:
        a, b: run directories, or names of runs in `folder`.
        folder: where to look for runs given by name.

    Returns:
        `store.runs.side_by_side`'s dict ("a", "b", "settings", "metrics") with "test": `paired_test`'s
        dict, or {"comparable": None, "reason", "verdict"} where a run has no predictions.csv to test.

    Raises:
        ConfigError: if a run is not found; DataError: if its config.json or metrics.json cannot be read.
    """
    comparison = runs.side_by_side(a, b, folder)
    paths = [comparison[side]["path"] for side in "ab"]
    try:
        comparison["test"] = paired_test(*paths)
    except DataError as error:  # a run without its predictions (written by hand, or cut short)
        reason = f"the photos cannot be compared one by one: {error}"
        comparison["test"] = {"comparable": None, "reason": reason, "verdict": reason}
    return comparison


def format_comparison(comparison) -> str:
    """`compare_runs`' result as text: the settings and metrics (`store.runs.format_side_by_side`), then
    the test on the same photos and the photos whose answer changed."""
    test = comparison["test"]
    lines = [runs.format_side_by_side(comparison), ""]
    if test["comparable"]:
        lines.append(f"Same {test['photos']} test photos in both runs.")
        if test["note"]:
            lines.append(f"Note: {test['note']}.")
    lines.append(test["verdict"])
    if test.get("changed"):
        lines += ["", f"Photos whose answer changed ({len(test['changed'])}):",
                  runs.table(["photo", "true", "A", "B", "right"],
                             [[row["path"], row["true"], row["a"], row["b"],
                               "B" if row["b"] == row["true"] else "A" if row["a"] == row["true"] else "neither"]
                              for row in test["changed"]], numeric=())]
    return "\n".join(lines)


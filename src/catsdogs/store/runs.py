"""Run directories side by side: `catsdogs runs` lists them, `catsdogs runs --compare A B` says what differs.

Only the JSON files of each run directory are read (config.json, metrics.json), so that listing is
instant and never imports TensorFlow. Runs written before a metric existed (balanced accuracy, say)
still list, with "-" in its place. The comparison's test of the difference on the same photos,
which reads predictions.csv too, is `engine.compare` (`catsdogs.compare_runs`).

    import catsdogs

    runs = catsdogs.list_runs("runs")                    # -> list of dicts, oldest first
    print(catsdogs.format_runs(runs))
"""

import json
import logging
import numbers
import os

from catsdogs.config.train import TrainConfig
from catsdogs.errors import ConfigError, DataError
from catsdogs.store.run_dir import CONFIG, METRICS, STAGING_PREFIX, RunDirectory, is_run_directory

log = logging.getLogger(__name__)


# Settings that say where things are and what the run is called, not what was trained: not options.
BOOKKEEPING = ("data_dir", "unknown_data", "cache_dir", "runs_dir", "name", "mlflow")
# Settings with columns of their own in the listing.
COLUMNS = ("backbone", "head", "image_size", "runtime", "precision")
# The defaults as config.json spells them (tuples become lists).
DEFAULTS = json.loads(json.dumps(TrainConfig(data_dir="").to_dict()))
# What a comparison shows besides per-class recall and top-k accuracy, by flattened key (`flatten_metrics`).
# A multi-label run's "accuracy" is its exact-match ratio; mAP and Hamming loss are its own.
HEADLINE = ("images", "accuracy", "balanced_accuracy", "mAP", "hamming_loss", "log_loss", "ece", "roc_auc")
OPEN_SET = ("open_set/test_kept", "open_set/unknown/accepted", "open_set/unknown/auroc")


def read_run(run_dir):
    """(config, metrics) of a run directory, as dicts.

    Raises:
        DataError: naming the run directory and the file missing or unreadable.
    """
    run = RunDirectory(run_dir)
    run.require(CONFIG, METRICS)
    return run.config(), run.metrics()


def flatten_metrics(metrics, prefix="") -> dict:
    """The numbers of metrics.json, nested keys joined by "/": {"accuracy": .., "per_class/cats/recall": ..}.

    Lists (the confusion matrix) and text are left out; so are booleans.
    """
    flat = {}
    for key, value in metrics.items():
        if isinstance(value, dict):
            flat.update(flatten_metrics(value, f"{prefix}{key}/"))
        elif isinstance(value, numbers.Real) and not isinstance(value, bool):
            flat[f"{prefix}{key}"] = value
    return flat


def training_seconds(metrics):
    """Seconds of the training stages metrics.json records, or None: the scan and feature
    extraction (from the cache or the backbone), the head, fine-tuning. Runs written before
    extraction was timed count the head and fine-tuning only."""
    seconds = [stage["seconds"] for stage in metrics.get("stages", {}).values()
               if isinstance(stage, dict) and isinstance(stage.get("seconds"), numbers.Real)]
    return sum(seconds) if seconds else None


def changed_settings(config) -> dict:
    """The settings of a config.json that differ from TrainConfig's defaults, bookkeeping left out."""
    return {key: value for key, value in config.items()
            if key in DEFAULTS and key not in BOOKKEEPING and value != DEFAULTS[key]}


def describe_setting(key, value):
    """`fine_tune` for a switch turned on, `calibrate=False` for one turned off, else `key=value`."""
    if value is True:
        return key
    if isinstance(value, list):
        value = ",".join(map(str, value))
    return f"{key}={value}"


def summarize_run(run_dir, config, metrics) -> dict:
    """One row of the listing (see `list_runs`)."""
    run, unknown = RunDirectory(run_dir), metrics.get("open_set", {}).get("unknown", {})
    return {
        "name": run.name,
        "path": run.path,
        **{key: config.get(key) for key in COLUMNS},
        "options": [describe_setting(key, value) for key, value in changed_settings(config).items()
                    if key not in COLUMNS],
        "accuracy": metrics.get("accuracy"),
        "balanced_accuracy": metrics.get("balanced_accuracy"),
        "unknown_accepted": unknown.get("accepted"),
        "seconds": training_seconds(metrics),
        "date": run.written().isoformat(timespec="seconds"),
    }


def list_runs(folder="runs") -> list:
    """The run directories in `folder`, oldest first.

    A folder that is not a finished run is left out with a warning saying why: a hidden `.partial-*`
    one (a training still writing it, or one that stopped before the end), one without config.json
    or metrics.json, or with one that cannot be read. Other hidden entries (the MLflow store of
    `tracking`) are not runs and are passed over silently.

    Returns:
        one dict per run: name, path, backbone, head, image_size, runtime, precision, options (the
        other settings that differ from the defaults, as "fine_tune" or "open_set=none"), accuracy,
        balanced_accuracy, unknown_accepted (the share of photos of no trained class accepted, with
        --unknown-data), seconds (`training_seconds`), date; a missing figure is None.

    Raises:
        ConfigError: if `folder` is not a folder.
    """
    if not os.path.isdir(folder):
        raise ConfigError(f"{folder}: no such folder of runs")
    runs = []
    for entry in sorted(os.scandir(folder), key=lambda entry: entry.name):
        if not entry.is_dir():
            continue
        if entry.name.startswith(STAGING_PREFIX):
            log.warning("skipped %s: unfinished (a training is still writing it, or stopped before the end)",
                        entry.path)
            continue
        if entry.name.startswith("."):
            continue
        try:
            runs.append(summarize_run(entry.path, *read_run(entry.path)))
        except DataError as error:
            log.warning("skipped %s", error)
    return sorted(runs, key=lambda run: run["date"])


def find_run(run, folder="runs"):
    """The run directory `run` names: a path, or the name of a run in `folder`.

    Raises:
        ConfigError: if neither holds a config.json.
    """
    for path in (run, os.path.join(folder, run)):
        if is_run_directory(path):
            return path
    raise ConfigError(f"run {run!r}: no run directory there or in {folder} (a run directory holds config.json)")


def headline_metrics(metrics) -> dict:
    """The figures a comparison shows, by flattened key: `HEADLINE`, top-k accuracy, recall of each
    class, `OPEN_SET` and "seconds" (`training_seconds`); those the run lacks are None."""
    flat = flatten_metrics(metrics)
    keys = [*HEADLINE, *(key for key in flat if key.startswith("top_k_accuracy/")),
            *(f"per_class/{name}/recall" for name in metrics.get("class_names", [])), *OPEN_SET]
    return {**{key: flat.get(key) for key in keys}, "seconds": training_seconds(metrics)}


def difference(a, b):
    """b - a where both are numbers, else None."""
    numeric = all(isinstance(v, numbers.Real) and not isinstance(v, bool) for v in (a, b))
    return b - a if numeric else None


def side_by_side(a, b, folder="runs") -> dict:
    """What differs between two runs: their settings, then their main metrics side by side.

    Args:
        a, b: run directories, or names of runs in `folder`.
        folder: where to look for runs given by name.

    Returns:
        {"a": {name, path, date}, "b": {...},
         "settings": [{"setting", "a", "b"}] for every setting that differs (None: absent from that run),
         "metrics": [{"metric", "a", "b", "difference"}] (difference b - a; None where either is missing)}.

    Raises:
        ConfigError: if a run is not found; DataError: if its config.json or metrics.json cannot be read.
    """
    paths = [find_run(run, folder) for run in (a, b)]
    (config_a, metrics_a), (config_b, metrics_b) = (read_run(path) for path in paths)
    settings = [{"setting": key, "a": config_a.get(key), "b": config_b.get(key)}
                for key in {**config_a, **config_b} if key != "name" and config_a.get(key) != config_b.get(key)]
    figures_a, figures_b = headline_metrics(metrics_a), headline_metrics(metrics_b)
    rows = [{"metric": key, "a": figures_a.get(key), "b": figures_b.get(key),
             "difference": difference(figures_a.get(key), figures_b.get(key))}
            for key in {**figures_a, **figures_b}]
    return {**{side: {"name": run.name, "path": run.path, "date": run.written().isoformat(timespec="seconds")}
               for side, run in zip("ab", map(RunDirectory, paths))},
            "settings": settings,
            "metrics": [row for row in rows if row["a"] is not None or row["b"] is not None]}


def _text(value, digits=4):
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    if isinstance(value, list):
        return ",".join(map(str, value))
    return str(value)


def _signed(value):
    if value is None:
        return "-"
    return f"{value:+d}" if isinstance(value, int) else f"{value:+.4f}"


def table(header, rows, numeric):
    """Columns padded to their widest cell; those named in `numeric` aligned right."""
    widths = [max(len(cell) for cell in column) for column in zip(header, *rows)]
    return "\n".join("  ".join(cell.rjust(width) if name in numeric else cell.ljust(width)
                               for name, cell, width in zip(header, line, widths)).rstrip()
                     for line in (header, *rows))


def format_runs(runs) -> str:
    """The listing of `list_runs` as a table, one line per run."""
    header = ["name", "backbone", "head", "size", "runtime", "options", "accuracy", "balanced",
              "unknown accepted", "seconds", "date"]
    rows = [[run["name"], _text(run["backbone"]), _text(run["head"]), _text(run["image_size"]),
             f"{_text(run['runtime'])} {_text(run['precision'])}", " ".join(run["options"]) or "-",
             _text(run["accuracy"]), _text(run["balanced_accuracy"]),
             "-" if run["unknown_accepted"] is None else f"{run['unknown_accepted']:.1%}",
             _text(run["seconds"], 1), run["date"].replace("T", " ")[:16]]
            for run in runs]
    return table(header, rows, numeric={"size", "accuracy", "balanced", "unknown accepted", "seconds"})


def format_side_by_side(comparison) -> str:
    """`side_by_side`'s result as two tables: the settings that differ, then the metrics."""
    a, b = comparison["a"], comparison["b"]
    lines = [f"A: {a['path']}  ({a['date'].replace('T', ' ')})", f"B: {b['path']}  ({b['date'].replace('T', ' ')})",
             ""]
    if comparison["settings"]:
        lines.append(table(["setting", "A", "B"],
                            [[row["setting"], _text(row["a"]), _text(row["b"])] for row in comparison["settings"]],
                            numeric=()))
    else:
        lines.append("same settings")
    lines.append("")
    lines.append(table(["metric", "A", "B", "B - A"],
                        [[row["metric"], _text(row["a"]), _text(row["b"]),
                          _signed(row["difference"])]
                         for row in comparison["metrics"]],
                        numeric={"A", "B", "B - A"}))
    return "\n".join(lines)

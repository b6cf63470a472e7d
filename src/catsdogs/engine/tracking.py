"""Logging a finished run to MLflow: its settings as parameters, its metrics, its run directory as artifacts.

On when MLFLOW_TRACKING_URI is set (MLflow's own variable: a tracking server, a database) or when
the run asks for it (`catsdogs train --mlflow`, `train(..., mlflow=True)`). Without MLFLOW_TRACKING_URI
the store is local, in the runs folder: MLflow's SQLite store runs/.mlflow/mlflow.db with the artifacts
in runs/.mlflow/artifacts, so that nothing leaves the machine (MLflow 3 refuses its old file store
unless told otherwise). Browse it with `mlflow ui --backend-store-uri sqlite:///runs/.mlflow/mlflow.db`.

The experiment is "catsdogs", or MLFLOW_EXPERIMENT_NAME; the MLflow run is named after the run
directory. MLflow's anonymous usage telemetry is off (MLFLOW_DISABLE_TELEMETRY) unless set otherwise.
The run directory is written before anything is logged: a failure to log is a warning, never a lost run.
"""

import json
import logging
import os
import pathlib
import re
import time

from catsdogs.errors import MissingDependency
from catsdogs.store.runs import flatten_metrics
from catsdogs.utils.extras import require

log = logging.getLogger(__name__)


EXPERIMENT = "catsdogs"
# In the runs folder; hidden, so that `catsdogs runs` does not take it for a run.
LOCAL_STORE = ".mlflow"


def enabled(config) -> bool:
    """Whether a run with this `TrainConfig` is logged: it asked to be, or MLFLOW_TRACKING_URI is set."""
    return config.mlflow or bool(os.environ.get("MLFLOW_TRACKING_URI"))


def local_store(runs_dir):
    """(tracking URI, artifact folder) of the local store in `runs_dir`."""
    folder = os.path.abspath(os.path.join(runs_dir, LOCAL_STORE))
    return f"sqlite:///{folder}/mlflow.db", os.path.join(folder, "artifacts")


def metric_key(key):
    """A flattened metric name MLflow accepts: class names may hold characters its names may not."""
    return re.sub(r"[^\w./\- ]", "_", key)


def log_run(run_dir, config, metrics):
    """Logs a written run to MLflow, when `enabled`.

    Args:
        run_dir: the run directory, complete: its files become the MLflow run's artifacts.
        config: the run's `TrainConfig`; every setting becomes a parameter.
        metrics: the run's metrics (metrics.json); every number becomes a metric, nested names joined
            by "/" (per_class/cats/recall, open_set/unknown/accepted).

    Returns:
        the MLflow run id, or None when nothing was logged (off, mlflow not installed, or MLflow
        failed: both are logged as warnings).
    """
    if not enabled(config):
        return None
    try:
        require("mlflow", "MLflow logging (MLFLOW_TRACKING_URI is set)")
    except MissingDependency as error:  # --mlflow without mlflow fails before training (TrainConfig.check)
        log.warning("run not logged to MLflow: %s", error)
        return None
    try:
        return _log_run(run_dir, config, metrics)
    except Exception as error:  # any failure of MLflow or its store: the run directory is complete
        log.warning("run %s not logged to MLflow: %s: %s (the run directory is complete)",
                    run_dir, type(error).__name__, error)
        return None


def _log_run(run_dir, config, metrics):
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")  # read when mlflow is imported, and at each event
    from mlflow import MlflowClient
    from mlflow.entities import Metric, Param

    uri, artifacts = os.environ.get("MLFLOW_TRACKING_URI"), None
    if not uri:
        uri, artifacts = local_store(config.runs_dir)
        os.makedirs(artifacts, exist_ok=True)
    client = MlflowClient(tracking_uri=uri)  # not mlflow.set_tracking_uri: the caller's own MLflow use stays as it is
    name = os.environ.get("MLFLOW_EXPERIMENT_NAME") or EXPERIMENT
    experiment = client.get_experiment_by_name(name)
    experiment_id = experiment.experiment_id if experiment else client.create_experiment(
        name, artifact_location=pathlib.Path(artifacts).as_uri() if artifacts else None)
    run = client.create_run(experiment_id, run_name=os.path.basename(run_dir),
                            tags={"catsdogs.run_dir": os.path.abspath(run_dir)})
    run_id = run.info.run_id
    try:
        params = [Param(key, value if isinstance(value, str) else json.dumps(value))
                  for key, value in config.to_dict().items()]
        now = int(time.time() * 1000)
        numbers = [Metric(metric_key(key), float(value), now, 0) for key, value in flatten_metrics(metrics).items()]
        client.log_batch(run_id, metrics=numbers, params=params)  # split into batches MLflow accepts by the client
        client.log_artifacts(run_id, run_dir)
    except BaseException:
        client.set_terminated(run_id, "FAILED")
        raise
    client.set_terminated(run_id, "FINISHED")
    log.info("logged to MLflow: run %s in experiment %r of %s%s", run_id, name, uri,
             f" (browse it: mlflow ui --backend-store-uri {uri})" if artifacts else "")
    return run_id

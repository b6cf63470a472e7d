"""`catsdogs serve --engine ray`: the same service as model replicas on Ray Serve.

Each replica is a Ray actor that loads the model once and runs the whole app of `app.create_app`
on it: every route and protocol, the page, the API key, the Host and Origin checks, the body,
image and pixel limits, the decode slots and the micro-batcher, so a replica answers exactly as
`catsdogs serve` does. Ray Serve's proxy (one per node) listens on --host:--port and hands each
request to a replica that has room (at most `max_active_requests` at once each: the others wait
in the proxy, where any replica can take them).

What stays per replica: the limits (`max_active_requests`, `max_decodes`) and the batches.
What Ray Serve's proxy does instead of `catsdogs serve`'s uvicorn: the connections, so
--header-timeout and --max-connections do not apply (keep-alive does).

Optional (`pip install "catsdogs[ray]"`); imported only for --engine ray.
"""

import logging
import math
import os
import signal
import socket
import threading

from ray import serve

from catsdogs.apps.serve.app import _warn_if_exposed, create_app, load_served_model
from catsdogs.config.serve import API_KEY_ENV, ReplicaSettings, ServeSettings
from catsdogs.engine.ray.cluster import cluster_address, connect

log = logging.getLogger(__name__)

APP_NAME = "catsdogs"  # the Ray Serve application, and its deployment


@serve.ingress()
class ModelReplica:
    """One replica: the model, loaded once, served by the app of `create_app` (Ray Serve builds it
    with `__serve_build_asgi_app__` and runs its lifespan: warm-up, then the batcher)."""

    def __init__(self, run_or_model, name, format, settings, host):
        """Args: as `serve_on_ray`."""
        classifier, default_name, metrics = load_served_model(run_or_model, format)
        self.service = create_app(classifier, name or default_name, metrics, settings, host)

    def __serve_build_asgi_app__(self):
        return self.service


def deployment_options(settings, replicas):
    """Ray Serve's options for the deployment of replicas.

    Args:
        settings: `ServeSettings`.
        replicas: `ReplicaSettings`.
    """
    options = {"max_ongoing_requests": settings.max_active_requests,
               "graceful_shutdown_timeout_s": settings.shutdown_timeout_s,
               # Ray sets OMP_NUM_THREADS to an actor's CPUs: TensorFlow's kernels run that many threads.
               "ray_actor_options": {"num_cpus": replicas.replica_cpus}}
    if replicas.autoscale_range:
        low, high = replicas.autoscale_range
        options["autoscaling_config"] = {"min_replicas": low, "max_replicas": high}
    else:
        options["num_replicas"] = replicas.replicas
    return options


def application(run_or_model, name, format, settings, host, replicas):
    """The Ray Serve application: the deployment of model replicas, bound to its arguments (as `serve_on_ray`'s)."""
    deployment = serve.deployment(ModelReplica, name=APP_NAME, **deployment_options(settings, replicas))
    return deployment.bind(run_or_model, name, format, settings, host)


def app_from_config(args):
    """A Ray Serve application builder, for `serve run` and KubeRay's `serveConfigV2`
    (`import_path: catsdogs.apps.serve.ray_serve:app_from_config`), where the config's
    `deployments` section sets the replicas.

    Args:
        args: `model` (a run directory, model file or export folder every node can read), and
            optionally `name`, `format`, `host` (the address the proxies listen on; default
            127.0.0.1) and any `ServeSettings` field; `api_key` defaults to $CATSDOGS_API_KEY.

    Returns:
        the application.
    """
    args = dict(args)
    model, name, format, host = args.pop("model"), args.pop("name", None), args.pop("format", None), args.pop(
        "host", "127.0.0.1")
    settings = ServeSettings(**{"api_key": os.environ.get(API_KEY_ENV) or None, **args})
    return application(model, name, format, settings, host, ReplicaSettings())


def _free_port(host):
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def _wait_for_stop():
    """Blocks until SIGINT (Ctrl-C) or SIGTERM."""
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    while not stop.wait(1):  # a timeout, so that the signal handlers get to run
        pass


def serve_on_ray(run_or_model, host="127.0.0.1", port=8000, settings=None, name=None, format=None, address=None,
                 replicas=None):
    """Deploys the service on Ray Serve and keeps it there until interrupted (SIGINT or SIGTERM).

    Without `address`, a Ray cluster of this machine is started, and stopped with the command. With
    one, the application joins that cluster's Ray Serve (started there if it is not running) and is
    deleted at the end, Ray Serve too if nothing else runs on it.

    Args:
        run_or_model: a run directory, a .keras file or an export folder, at a path every node can read.
        host: the address every proxy listens on.
        port: the port; 0 picks a free one (on this machine).
        settings: `ServeSettings`.
        name: the model's name in the URLs (default: the run directory's name).
        format: as for `classifier.load`.
        address: the Ray cluster (`engine.ray.cluster.connect`).
        replicas: `ReplicaSettings`.
    """
    settings, replicas = settings or ServeSettings(), replicas or ReplicaSettings()
    _warn_if_exposed(host, settings)
    started_here = cluster_address(address) is None
    ray = connect(address)
    port = port or _free_port(host)
    try:
        serve.start(http_options={"host": host, "port": port,
                                  "keep_alive_timeout_s": math.ceil(settings.keep_alive_s)})
        serve.run(application(run_or_model, name, format, settings, host, replicas), name=APP_NAME, route_prefix="/")
        count = replicas.autoscale or replicas.replicas
        address_shown = f"[{host}]" if ":" in host else host
        log.info("Ray Serve: %s replicas of the model, running on http://%s:%d (Ctrl-C to stop)", count,
                 address_shown, port)
        _wait_for_stop()
    finally:
        log.info("stopping the replicas")
        serve.delete(APP_NAME)
        if started_here or not serve.status().applications:
            serve.shutdown()
        if started_here:
            ray.shutdown()

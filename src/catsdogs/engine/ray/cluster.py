"""Connecting to a Ray cluster (or starting one here) with catsdogs importable on it."""

import logging
import os

from catsdogs.utils.extras import require


def connect(address=None, num_cpus=None):
    """Connects to a Ray cluster, or starts one on this machine, with catsdogs importable on it.

    Args:
        address: "auto" (the cluster this machine belongs to), "HOST:PORT" of a head node,
            "ray://HOST:10001" (Ray Client), or None: $RAY_ADDRESS if set, else a new local
            cluster on this machine, listening on 127.0.0.1 only.
        num_cpus: CPUs of a new local cluster (default: all of this machine's).

    Returns:
        the `ray` module, initialised.
    """
    require("ray", "--engine ray")
    import ray

    import catsdogs

    if ray.is_initialized():  # a cluster this process already joined (a notebook, a test)
        return ray
    address = cluster_address(address)
    # The catsdogs of this process travels with the job, so workers run the same code as the driver.
    runtime_env = {"py_modules": [os.path.dirname(catsdogs.__file__)]}
    local = {} if address else {"_node_ip_address": "127.0.0.1", "include_dashboard": False, "num_cpus": num_cpus}
    ray.init(address=address, runtime_env=runtime_env, logging_level=logging.WARNING, **local)
    return ray


def cluster_address(address=None):
    """The cluster `connect` joins: `address`, else $RAY_ADDRESS; None where it starts one on this machine."""
    return address or os.environ.get("RAY_ADDRESS") or None


def alive_nodes(ray):
    """The ids of the cluster's live nodes."""
    return [node["NodeID"] for node in ray.nodes() if node["Alive"]]


def use_every_core():
    """Lets TensorFlow in this Ray worker use every core of its machine.

    Ray sets OMP_NUM_THREADS to a worker's whole CPUs (1 for a fraction), and TensorFlow's
    oneDNN kernels follow it: the model then ran on one core of two, at half the speed. Called
    before TensorFlow is imported in the worker.
    """
    from catsdogs.utils.host import usable_cpus

    os.environ["OMP_NUM_THREADS"] = str(usable_cpus())


def node_id():
    import ray

    return ray.get_runtime_context().get_node_id()

"""Can the cluster ever host the actor pools the job claims? Checked once Ray is up, before any output
is written, so a claim no node can meet fails in seconds instead of after ``actor_start_timeout_s``.

Where an autoscaler can add nodes the check is skipped and Ray Data waits for the pools (up to the
timeout). A local cluster started by the CLI has none; a joined cluster (``RAY_ADDRESS``) has one when
Ray's autoscaler has registered in the GCS (v2 sets a flag, v1's monitor writes its status); the job
spec's ``resources.autoscaler`` overrides the detection.
"""

from __future__ import annotations

import json
import os

from pipelines.config import PoolSpec, ResourcesSpec
from pipelines.errors import SpecError

# Ray resource name, PoolSpec field
_CLAIMS = (("CPU", "num_cpus"), ("GPU", "num_gpus"))


def has_autoscaler() -> bool:
    """Whether an autoscaler serves the cluster this driver is connected to."""
    if not os.environ.get("RAY_ADDRESS"):
        return False  # the CLI started this cluster itself: nothing can add nodes to it
    from ray._private import ray_constants
    from ray.autoscaler.v2.utils import is_autoscaler_v2
    from ray.experimental import internal_kv

    try:
        if is_autoscaler_v2(fetch_from_server=True):
            return True
        status = internal_kv._internal_kv_get(ray_constants.DEBUG_AUTOSCALING_STATUS)
    except Exception:  # noqa: BLE001 - an unknown state: let Ray Data wait rather than fail a good job
        return True
    # Every head runs v1's monitor; without an autoscaling config it has a read-only provider whose node
    # types are the anonymous "node_<id>". A real one (e.g. KubeRay's) reports its configured node types.
    report = (json.loads(status) if status else {}).get("autoscaler_report") or {}
    return any(t != f"node_{n}" for n, t in (report.get("node_type_mapping") or {}).items())


def pools(resources: ResourcesSpec) -> dict[str, PoolSpec]:
    """The actor pools of a run, by their spec key."""
    return {"generate": resources.generate, "embed": resources.embed}


def problems(resources: ResourcesSpec, nodes: list[dict[str, float]]) -> list[str]:
    """What the pools claim that these nodes (their total resources) can never provide, naming the key."""
    out = []
    for res, key in _CLAIMS:
        total = sum(n.get(res, 0.0) for n in nodes)
        largest = max((n.get(res, 0.0) for n in nodes), default=0.0)
        for name, pool in pools(resources).items():
            claim = getattr(pool, key)
            if claim > largest:
                where = (f"the cluster has {total:g} {res}" if total == 0 or len(nodes) == 1 else
                         f"no node has more than {largest:g} {res} (cluster: {total:g})")
                out.append(f"resources.{name}.{key}={claim:g} but {where} and no autoscaler")
        need = {name: pool.size * getattr(pool, key) for name, pool in pools(resources).items()}
        if not out and sum(need.values()) > total:
            parts = " + ".join(f"resources.{n} {p.size} x {getattr(p, key):g}" for n, p in pools(resources).items())
            out.append(f"the actor pools claim {sum(need.values()):g} {res} ({parts}) but the cluster has "
                       f"{total:g} {res} and no autoscaler")
    return out


def check_pools_fit_here(resources: ResourcesSpec) -> None:
    """``synthgen validate``, without starting Ray: the local cluster a run would start on this machine
    (``ray_num_cpus`` or every CPU, the GPUs torch sees). Skipped for a cluster (``RAY_ADDRESS``)."""
    if os.environ.get("RAY_ADDRESS") or resources.autoscaler:
        return
    import torch

    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    found = problems(resources, [{"CPU": float(resources.ray_num_cpus or os.cpu_count() or 1), "GPU": float(gpus)}])
    if found:
        raise SpecError("; ".join(found))


def check_pools_fit(resources: ResourcesSpec) -> None:
    """Raise ``SpecError`` (exit 2) when the connected cluster can never start the pools."""
    import ray

    auto = resources.autoscaler if resources.autoscaler is not None else has_autoscaler()
    if auto:
        return
    nodes = [dict(n["Resources"]) for n in ray.nodes() if n.get("Alive")]
    found = problems(resources, nodes)
    if found:
        raise SpecError("; ".join(found))

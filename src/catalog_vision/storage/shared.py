"""A local output path on a multi-node cluster must be one shared mount (NFS, EFS, Lustre, ...).

Backfill commit tasks and Train workers write from whichever node they run on. With a local path
that is each node's own disk, the Parquet files and checkpoints would scatter over the nodes and
the driver would count only its own node's share. Before a job writes, :func:`check_shared` writes a
marker file with a random token from the driver and has a task on every other alive node read it
back; a node that cannot see it stops the job with its address. Object storage (``s3://``) needs
no check, and neither does a single-node cluster.
"""

from __future__ import annotations

import os
import secrets
from typing import Any, Mapping, Sequence

from . import absolute, is_remote

MARKER = ".catalog-vision-shared-"


class NotShared(RuntimeError):
    """A local path that some nodes of the cluster do not see."""


def _sees(marker: str, token: str) -> bool:
    try:
        with open(marker) as f:
            return f.read() == token
    except OSError:
        return False


def check_shared(uris: Sequence[str], storage: Mapping[str, Any] | None = None, timeout_s: float = 120.0) -> list[str]:
    """Raise :class:`NotShared` unless every alive node sees each local path in ``uris`` as the
    driver does; returns the local paths checked (empty when there was nothing to check)."""
    if not (storage or {}).get("check_shared", True):
        return []
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    local = sorted({absolute(u) for u in uris if u and not is_remote(u)})
    here = ray.get_runtime_context().get_node_id()
    others = [n for n in ray.nodes() if n["Alive"] and n["NodeID"] != here]
    if not local or not others:
        return []
    sees = ray.remote(num_cpus=0, max_retries=0)(_sees)
    for path in local:
        os.makedirs(path, exist_ok=True)
        token = secrets.token_hex(16)
        marker = os.path.join(path, MARKER + token)
        with open(marker, "w") as f:
            f.write(token)
        try:
            refs = [sees.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)).remote(marker, token) for n in others]
            ready, _ = ray.wait(refs, num_returns=len(refs), timeout=timeout_s)
            answers = [ray.get(r) if r in ready else None for r in refs]
        finally:
            os.remove(marker)
        blind = [f"{n['NodeManagerAddress']} (node {n['NodeID'][:12]}{'' if a is False else ', no answer in %.0fs' % timeout_s})"
                 for n, a in zip(others, answers) if not a]
        if blind:
            raise NotShared(
                f"{path} is a local path, and {len(blind)} of the cluster's {len(others) + 1} nodes do not see it as the driver's node does: "
                f"{', '.join(blind)}. On a multi-node cluster put paths.root on object storage (storage=s3 paths.root=s3://bucket/prefix) "
                "or on a mount every node shares (NFS, EFS, Lustre); storage.check_shared=false skips this check."
            )
    return local

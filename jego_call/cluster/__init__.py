"""Several `jego serve` nodes as one service (docs/architecture.md "Cluster").

`open_node(cfg)` builds this node's `ClusterNode` on the shared state `[cluster] redis_url`
names: `redis://...` (RedisState) or `memory://NAME` (MemoryState: nodes in one process, for
tests). `state.py` is the seam (SharedState), `node.py` the hub's link, `doors.py` the login
lockouts and buckets shared by every node.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .node import ClusterNode, default_node_id
from .state import MemoryState, SharedState, StateUnavailable

if TYPE_CHECKING:
    from ..config import Config

__all__ = ["ClusterNode", "MemoryState", "SharedState", "StateUnavailable", "default_node_id", "open_node",
           "open_state"]


def open_state(cfg: Config) -> SharedState:
    """The SharedState `[cluster] redis_url` names (not connected yet)."""
    url = cfg.cluster.redis_url
    if url.startswith("memory://"):
        return MemoryState.named(url[len("memory://"):] or "default")
    from .redis_state import RedisState  # redis is imported only by nodes of a cluster

    return RedisState(url, cfg.cluster.key_prefix, timeout_s=cfg.cluster.op_timeout_s)


async def open_node(cfg: Config, info: dict[str, object] | None = None, wait_s: float | None = None) -> ClusterNode:
    """This node, connected to the shared state (waits for it, logging, up to `wait_s`)."""
    node = ClusterNode(open_state(cfg), cfg.cluster, cfg.cluster.node_id or default_node_id(), info=info)
    await node.start(wait_s)
    return node

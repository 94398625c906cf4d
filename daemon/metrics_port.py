"""The node's metrics port: ``GET /metrics`` on ``[metrics] port``, served by the keeper.

The keeper lives as long as the node, so the port answers whatever actors restart; what it
serves is ``actors.metrics.render``, the merge of every process's figures (the same view as
any predictor's ``GET /metrics``). Its tokens are the predictors' (``[predict] tokens``).
"""

from __future__ import annotations

from actors import metrics
from actors.edge import HttpEdge, Request, Response, Route
from config.settings import Settings

__all__ = ["open_metrics_port"]


def _scrape(request: Request) -> Response:
    return Response(200, metrics.render(), content_type=metrics.CONTENT_TYPE)


def open_metrics_port(settings: Settings) -> HttpEdge | None:
    """Serve the node's metrics (None when ``[metrics] port`` is 0); raises OSError when the
    port cannot be bound. Open it after the actor system has forked its admin, so that no
    actor process inherits the listening socket."""
    if not settings.metrics.port:
        return None
    edge = HttpEdge(host=settings.metrics.host, port=settings.metrics.port,
                    routes=[Route("GET", "/metrics", _scrape, blocking=True)],
                    tokens=settings.predict.tokens, reuse_port=False, max_connections=64,
                    max_body_bytes=64 * 1024, name="metrics")
    edge.start()
    return edge

"""Routes, the sub-models a router picks among: their type, names and histogram summaries."""

from __future__ import annotations

import math
import re

Route = tuple[int, int, int]  # (hidden, layers, embedding)


def route_name(route: Route) -> str:
    """The route's name in logs and results, e.g. ``h64-l2-e96``."""
    return "h{}-l{}-e{}".format(*route)


_NAME = re.compile(r"^h([1-9]\d*)-l([1-9]\d*)-e([1-9]\d*)$", re.ASCII)


def parse_route(name: str) -> Route | None:
    """The route a name such as ``h64-l2-e96`` names, or None if it is not one."""
    match = _NAME.match(name) if isinstance(name, str) else None
    return None if match is None else (int(match[1]), int(match[2]), int(match[3]))


def route_summary(counts: dict[str, int], top: int = 5) -> dict[str, object]:
    """A route histogram's entropy (nats), effective number of routes (exp entropy), routes
    used and its most frequent routes with their shares."""
    total = sum(counts.values())
    if not total:
        return {"users": 0, "entropy": None, "perplexity": None, "routes_used": 0, "top": []}
    shares = {k: v / total for k, v in counts.items() if v}
    entropy = -sum(p * math.log(p) for p in shares.values())
    ranked = sorted(shares.items(), key=lambda kv: (-kv[1], kv[0]))[:top]
    return {
        "users": total,
        "entropy": round(entropy, 4),
        "perplexity": round(math.exp(entropy), 3),
        "routes_used": len(shares),
        "top": [[k, round(p, 4)] for k, p in ranked],
    }

"""Moved to spanbert_ds/run/distributed.py (issue 24). Kept only for demo.py until it imports free_port from
there; delete this file then."""

from spanbert_ds.run.distributed import free_port  # noqa: F401

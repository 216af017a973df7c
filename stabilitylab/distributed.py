"""The public name of :func:`stabilitylab.study.cluster.record_distributed` (docs/distributed.md)."""

from stabilitylab.study.cluster import GPU, record_distributed

__all__ = ["GPU", "record_distributed"]

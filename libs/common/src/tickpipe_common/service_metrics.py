"""Metrics every tickpipe service exports, whatever it does, so one query covers them all:

- ``tickpipe_service_info{component, version}`` — always 1; tells which service a scrape
  target is (job names differ between the local stack, compose and Kubernetes).
- ``tickpipe_service_ready{component}`` — 1 when the service's ``/readyz`` would say ready.

The label is ``component``, not ``service``: the Prometheus Operator adds its own ``service``
target label to everything a ServiceMonitor scrapes.

Importing this module also turns off prometheus_client's ``*_created`` series (one extra
series per counter and histogram, which Prometheus 2 does not use).
"""

from __future__ import annotations

from importlib import metadata

from prometheus_client import REGISTRY, CollectorRegistry, Gauge, disable_created_metrics

disable_created_metrics()  # type: ignore[no-untyped-call]  # untyped in prometheus_client

# component → the distribution it ships in (for the version label)
_DISTRIBUTIONS = {
    "market-sim": "tickpipe-market-sim",
    "producer-stocks": "tickpipe-producer-stocks",
    "producer-crypto": "tickpipe-producer-crypto",
    "consumer": "tickpipe-consumer",
}


def component_version(component: str) -> str:
    try:
        return metadata.version(_DISTRIBUTIONS.get(component, "tickpipe-common"))
    except metadata.PackageNotFoundError:
        return "unknown"


def register_service_info(component: str, registry: CollectorRegistry = REGISTRY) -> Gauge:
    info = Gauge(
        "tickpipe_service_info",
        "Always 1: the tickpipe component behind this scrape target, and its version.",
        ("component", "version"),
        registry=registry,
    )
    info.labels(component, component_version(component)).set(1)
    return info


class ReadyGauge:
    """A service's own ``<prefix>_ready`` gauge, mirrored into ``tickpipe_service_ready``.

    Has the ``set`` of a gauge, so code that reports readiness needs no change."""

    def __init__(
        self,
        name: str,
        documentation: str,
        component: str,
        registry: CollectorRegistry = REGISTRY,
    ) -> None:
        self._own = Gauge(name, documentation, registry=registry)
        self._shared = Gauge(
            "tickpipe_service_ready",
            "1 when the component is ready for work (its /readyz answers 200), else 0.",
            ("component",),
            registry=registry,
        ).labels(component)

    def set(self, value: float) -> None:
        self._own.set(value)
        self._shared.set(value)

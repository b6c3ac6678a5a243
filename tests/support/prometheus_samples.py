"""Prometheus text as a flat table: (sample name, its sorted labels) -> value, for tests that
compare a metric before and after something happens."""

from __future__ import annotations

import urllib.request

from prometheus_client.parser import text_string_to_metric_families

Key = tuple[str, tuple[tuple[str, str], ...]]
Samples = dict[Key, float]


def samples(text: str) -> Samples:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def scrape(port: int, timeout: float = 30) -> Samples:
    """The samples `GET http://127.0.0.1:<port>/metrics` answers."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=timeout) as resp:
        return samples(resp.read().decode())

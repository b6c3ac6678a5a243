"""A numbered sample alert for the detector's output tests: `fd.name` is /etc/<n>, so a
receiver can tell which alerts arrived and in what order."""

from __future__ import annotations

from detector.alerts import Alert, Priority


def numbered_alert(n: int) -> Alert:
    return Alert(
        time_ns=1_790_000_000_000_000_000 + n,
        rule="Write to container root filesystem in exec session",
        priority=Priority.ERROR,
        output=f"write n={n}",
        output_fields={"fd.name": f"/etc/{n}", "podlock.drops": 0},
        tags=("maturity_stable",),
        hostname="node-1",
    )

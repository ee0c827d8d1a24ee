"""Delivery receipts: what the phone confirmed, reported after the scenarios."""

from __future__ import annotations

import json

from relay_devkit.demo.flow import FlowEnds, relay_get
from relay_devkit.demo.report import DemoReport

# ---- delivery receipts: what the phone confirmed ----


async def report_receipts(ends: FlowEnds, report: DemoReport) -> None:
    """The confirmed ratio (receipts the relay recorded / alert pushes the phone got with one),
    and the relay's status of a confirmed push showing when the phone had it."""
    extension = ends.phone.extension
    if extension is None:
        return
    await extension.drain()
    report.section("Delivery receipts")
    confirmed = extension.confirmed()
    carried = len(extension.sent)
    lost = sum(1 for sent in extension.sent if sent.status is None)
    ratio = len(confirmed) / carried if carried else 0.0
    report.note(
        f"confirmed ratio: {len(confirmed)} of {carried} alert pushes confirmed on the phone"
        f" ({ratio:.0%}); {lost} receipts lost on the way"
    )
    refused = [s for s in extension.sent if s.status not in (204, None)]
    report.check(
        "every receipt the phone posted was recorded",
        not refused,
        f"refused: {refused}",
        source="relay",
    )
    if confirmed:
        sample = sorted(confirmed)[0]
        status, body = await relay_get(ends, f"/v1/notifications/{sample}")
        shown = json.loads(body) if status == 200 else {}
        latency = shown.get("device_latency_ms")
        report.note(f"status of {sample}: received_at_ms set, device_latency_ms {latency}")
        report.check(
            "the status API shows when the phone had it",
            isinstance(shown.get("received_at_ms"), int) and isinstance(latency, int),
            f"{status} {body}",
            source="relay",
        )

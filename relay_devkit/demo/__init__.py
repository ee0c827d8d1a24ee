"""`apns-relay demo`: the whole GMS flow in one process, printed as a timed transcript of hops.

Nothing to configure: an embedded Valkey, the APNs simulator, the relay (api + worker), the GMS
simulator and one simulated phone start here, and the scenarios run through them: callbacks
through the GMS simulator's state machine (confirm; snooze, after leaving the menu and fetching its
_resource_url again; cancel; a confirmation that times out, and one that expires at the relay while
APNs is down; connect-inbound's DialNumber), a chat over Comet (the agent joining, typing and
leaving), and a Live Activity. Every hop (GMS → relay → APNs → phone → GMS, Comet) is printed with
the milliseconds since the start, and every check is labelled with what it holds the flow to:
[seed] the seed's text (its dialogs, its Comet events, its URL formula), [inferred] an inference
docs/gms.md lists, [relay] the relay's own rules (lifetimes, metrics, Apple's). The
exit status is 0 only if every check passed.

The package: `runner` (the stack, the scenarios in turn, the command line), `report` (the
transcript and its checks), `flow` (the parties, following a step, the seed's expectations), and
one module per scenario group: `callbacks`, `chat`, `live_activity`, `receipts`.
"""

from relay_devkit.demo.callbacks import callback_confirm
from relay_devkit.demo.chat import SEED_CHAT_EVENTS, normalised_event
from relay_devkit.demo.flow import (
    DEMO_APP,
    DEMO_CIRCUIT,
    FlowEnds,
    Marks,
    RecordingApp,
    check_seed_dialog,
    flow_ends,
)
from relay_devkit.demo.report import DemoReport
from relay_devkit.demo.runner import DEMO_SCENARIOS, configure, run, run_demo

# `apns-relay demo` runs `configure` and `run`; the rest is what the flow tests drive.
__all__ = [
    "DEMO_APP",
    "DEMO_CIRCUIT",
    "DEMO_SCENARIOS",
    "SEED_CHAT_EVENTS",
    "DemoReport",
    "FlowEnds",
    "Marks",
    "RecordingApp",
    "callback_confirm",
    "check_seed_dialog",
    "configure",
    "flow_ends",
    "normalised_event",
    "run",
    "run_demo",
]

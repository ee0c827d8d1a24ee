"""The argparse entry points: serve, api, worker (serve.py), check (check.py), push and status
(remote.py); relay.cli wires them as sub-commands."""

"""The argparse entry points: serve, api, worker (serve.py), check, push and status (remote.py)."""

"""gms-apns-relay: Genesys Mobile Services push notifications to iPhones over APNs HTTP/2.

Layers, lowest first; each imports only those below it (the import contract in pyproject.toml,
checked by `make lint`): core (pure domain), config, telemetry, credentials, store, ingest,
delivery, http, runtime (the composition root), commands (argparse); cli is the entry point."""

__version__ = "0.1.0"

"""The HTTP API (aiohttp): GMS webhook and JSON ingest, status, health, metrics, problem+json."""

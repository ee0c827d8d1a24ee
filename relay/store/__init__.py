"""The store: Redis (queues, indexes, records, run by Lua), the api's local spool, and ingest,
the one path by which a push is stored."""

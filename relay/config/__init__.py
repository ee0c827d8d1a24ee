"""Configuration: the YAML schema, RELAY_* overrides, one wording for errors (schema.py), the Redis
topology a URL names (topology.py) and bounded reads of the files it names (secret_files.py).
Imports only relay.core."""

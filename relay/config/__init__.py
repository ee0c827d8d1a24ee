"""Configuration: the YAML schema, RELAY_* overrides, one wording for errors. Imports only
relay.core (and relay.credentials for the certificate check at validation, the one exception
the import contract in pyproject.toml names)."""

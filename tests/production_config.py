"""A production configuration written without the development kit: a real ES256 key on disk, one
app, one API token. For tests of real processes that must not lean on dev mode or simulators."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec


def production_document(tmp_path: Path, redis_url: str) -> dict[str, Any]:
    key = ec.generate_private_key(ec.SECP256R1())
    key_file = tmp_path / "AuthKey_ABCDE12345.p8"
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return {
        "redis": {"url": redis_url},
        "auth": {"api_tokens": ["test-token-0123456789"]},
        "apps": [
            {
                "name": "demo",
                "topic": "com.example.demo",
                "environment": "sandbox",
                "auth": {
                    "token": {
                        "key_file": str(key_file),
                        "key_id": "ABCDE12345",
                        "team_id": "TEAM123456",
                    }
                },
            }
        ],
    }

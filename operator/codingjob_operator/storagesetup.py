"""``codingjob-storage-setup``: give the bundled MinIO its scoped identities (a Helm hook Job).

Runs once per install and upgrade with MinIO's root user, which it alone (besides MinIO) reads:
it creates the bucket, the operator's bucket-scoped user and the read-only URL signer, so the
root key never leaves the operator namespace. Idempotent; waits for MinIO to come up.
"""

from __future__ import annotations

import logging
import sys
import time

from pydantic import Field, SecretStr, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from .storage import Identity, StorageError, TransientStorageError, provision

log = logging.getLogger("codingjob.storage-setup")


class SetupSettings(BaseSettings):
    """``CODINGJOB_SETUP_*``: the store, its root user and the identities to create."""

    model_config = SettingsConfigDict(env_prefix="CODINGJOB_SETUP_")

    endpoint: str
    secure: bool = False
    region: str = "us-east-1"
    bucket: str
    root_access_key: SecretStr
    root_secret_key: SecretStr
    operator_access_key: SecretStr
    operator_secret_key: SecretStr
    signer_access_key: SecretStr
    signer_secret_key: SecretStr
    timeout_seconds: float = Field(300.0, gt=0)


def _identity(access: SecretStr, secret: SecretStr) -> Identity:
    return Identity(access.get_secret_value(), secret.get_secret_value())


def main() -> None:
    """Console entry point: provision, retrying while MinIO starts; exit 1 on failure."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        settings = SetupSettings()
    except ValidationError as error:
        log.error("invalid settings: %s", error)
        sys.exit(1)
    deadline = time.monotonic() + settings.timeout_seconds
    while True:
        try:
            provision(
                settings.endpoint,
                _identity(settings.root_access_key, settings.root_secret_key),
                settings.bucket,
                _identity(settings.operator_access_key, settings.operator_secret_key),
                _identity(settings.signer_access_key, settings.signer_secret_key),
                secure=settings.secure,
                region=settings.region,
            )
            break
        except TransientStorageError as error:
            if time.monotonic() > deadline:
                log.error("object storage did not answer in time: %s", error)
                sys.exit(1)
            log.info("waiting for object storage: %s", error)
            time.sleep(2)
        except StorageError as error:
            log.error("provisioning failed: %s", error)
            sys.exit(1)
    log.info("bucket %s, operator and signer identities are in place", settings.bucket)


if __name__ == "__main__":
    main()

"""MLflow's and boto3's internals that VisionOps' tracking needs.

- MLflow's S3 artifact store gets its credentials through boto3, whose default session keeps the
  first ones a process sees, and MLflow caches its S3 clients: a process whose S3 settings change
  (a notebook, the tests) would keep using the old ones. `forget_s3_clients` drops both.
- MLflow tells "server unreachable" and "no such alias" apart only in the text of its exceptions:
  `is_unreachable` and `is_missing_alias` read it.
- A run's artifacts that fail to download for any reason (an outage of the store included) come
  back as one "Failed to download artifacts" error without a cause: `is_failed_download` reads it,
  so that VisionOps asks the server what fails instead of calling the model missing.
"""

from __future__ import annotations

import sys

from visionops._compat import Internal

INTERNALS = (
    Internal(
        "boto3:DEFAULT_SESSION",
        "forget_s3_clients resets it so that the next client reads the credentials again",
    ),
    Internal(
        "boto3:_get_default_session",
        "forget_s3_clients relies on it creating a new session when DEFAULT_SESSION is None",
        "14778be7fe6d5a5b",
    ),
    Internal(
        "mlflow.store.artifact.s3_artifact_repo:_cached_get_s3_client",
        "forget_s3_clients clears its cache (an lru_cache over the S3 settings)",
        "3d7461a7d59a9075",
    ),
    Internal(
        "mlflow.utils.rest_utils:http_request",
        "is_unreachable reads its 'API request to ... failed with exception' message",
        "f886d55e0e812f53",
    ),
    Internal(
        "mlflow.store.artifact.runs_artifact_repo:RunsArtifactRepository.download_artifacts",
        "is_failed_download reads its 'Failed to download artifacts' message",
        "1c69b134b665de29",
    ),
    Internal(
        "mlflow.store.model_registry.sqlalchemy_store:SqlAlchemyStore.get_model_version_by_alias",
        "is_missing_alias reads its 'Registered model alias ... not found' message",
        "a41cb6cbd4c0bf43",
    ),
)


def forget_s3_clients() -> None:
    """Make MLflow's next S3 client read the credentials from the environment again."""
    boto3 = sys.modules.get("boto3")
    if boto3 is not None:
        boto3.DEFAULT_SESSION = None
    repo = sys.modules.get("mlflow.store.artifact.s3_artifact_repo")
    if repo is not None:
        repo._cached_get_s3_client.cache_clear()


def is_unreachable(message: str) -> bool:
    """True if an MlflowException's message says the server did not answer (after retries)."""
    return "API request to" in message and "failed with exception" in message


def is_missing_alias(message: str) -> bool:
    """True if an MlflowException's message says a registered model alias does not exist."""
    return "alias" in message and "not found" in message


def is_failed_download(message: str) -> bool:
    """True if an MlflowException's message is the catch-all of a failed artifact download."""
    return message.startswith("Failed to download artifacts")

"""The MLflow registry source: ``models:/<name>@<alias>`` per role (see
:mod:`serving.models.contract` for the layout a version must have)."""

from __future__ import annotations

import tempfile
from pathlib import Path

from bandit_core import Policy, load_policy
from serving.models.contract import POLICY_STATE_PATH, version_label
from serving.models.sources import ROLES, ModelRef, Role

_MISSING = {"RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"}


class MlflowModelSource:
    """Polls registry aliases; downloads only the policy state file of a new version.

    Parameters
    ----------
    tracking_uri, registry_uri : str
        MLflow server or database (``registry_uri`` defaults to ``tracking_uri``).
    model_name : str
        Registered model name.
    aliases : dict
        Alias per role, e.g. ``{"production": "production", "candidate": "staging"}``;
        a role without an alias is never served.
    """

    name = "mlflow"

    def __init__(
        self,
        tracking_uri: str,
        model_name: str,
        aliases: dict[Role, str | None],
        registry_uri: str | None = None,
    ) -> None:
        from mlflow import MlflowClient  # heavy import, only when this source is used

        self.tracking_uri = tracking_uri
        self.registry_uri = registry_uri or tracking_uri
        self.model_name = model_name
        self.aliases = {role: aliases.get(role) for role in ROLES}
        self._client = MlflowClient(tracking_uri=tracking_uri, registry_uri=self.registry_uri)

    def resolve(self, role: Role) -> ModelRef | None:
        from mlflow.exceptions import MlflowException

        alias = self.aliases[role]
        if alias is None:
            return None
        try:
            found = self._client.get_model_version_by_alias(self.model_name, alias)
        except MlflowException as exc:
            if exc.error_code in _MISSING:
                return None
            raise
        return ModelRef(version_label(self.model_name, found.version), str(found.version))

    def load(self, ref: ModelRef) -> Policy:
        from mlflow.artifacts import download_artifacts

        root = self._client.get_model_version_download_uri(self.model_name, ref.locator)
        with tempfile.TemporaryDirectory(prefix="banditops-model-") as tmp:
            local = download_artifacts(
                artifact_uri=f"{root.rstrip('/')}/{POLICY_STATE_PATH}",
                dst_path=tmp,
                tracking_uri=self.tracking_uri,
            )
            policy = load_policy(Path(local))
        policy.model_version = ref.version
        return policy

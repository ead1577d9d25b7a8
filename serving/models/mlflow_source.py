"""The MLflow registry source: ``models:/<name>@<alias>`` per role (see
:mod:`eventstore.contract` for the layout a version must have). The MLflow calls are
:class:`modelregistry.registry.AliasReader`'s; this adapts them to a model source."""

from __future__ import annotations

import tempfile
from datetime import UTC, datetime, timedelta

from bandit_core import Policy
from eventstore.admission import Admission, AdmissionError
from eventstore.contract import STATE_DIGEST_TAG, WINDOW_STOP_TAG, version_label, window_stop_time
from eventstore.schema import INCARNATION_LENGTH
from eventstore.text import redact_credentials
from modelregistry.registry import AliasReader, client_defaults
from serving.models.sources import ROLES, ModelRef, Role

#: How much later than a version's registration its window may end (clocks of the
#: machines that extracted the window and registered the version may differ this much).
CLOCK_SKEW = timedelta(hours=1)


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
        admission: Admission | None = None,
    ) -> None:
        client_defaults()
        self.admission = admission or Admission()
        self.tracking_uri = tracking_uri
        self.registry_uri = registry_uri or tracking_uri
        self.model_name = model_name
        self.aliases = {role: aliases.get(role) for role in ROLES}
        self._reader = AliasReader(tracking_uri, model_name, registry_uri=self.registry_uri)

    def describe(self, role: Role) -> str:
        alias = self.aliases[role]
        where = redact_credentials(self.registry_uri)
        if alias is None:
            return f"no alias is configured for the {role} role"
        return (
            f"the registry {where} has no version of {self.model_name!r} @{alias} (no such "
            "registered model, or no version holds the alias)"
        )

    def resolve(self, role: Role) -> ModelRef | None:
        alias = self.aliases[role]
        if alias is None:
            return None
        found = self._reader.resolve(alias)
        if found is None:
            return None
        version, tags, created_ms = found
        label = version_label(self.model_name, version)
        digest = tags.get(STATE_DIGEST_TAG) or None
        # the state's digest names the artifact; a version registered without one (before
        # registration recorded it) is told from a re-created namesake by its creation time
        incarnation = (digest or f"created-{created_ms}")[:INCARNATION_LENGTH]
        stop = tags.get(WINDOW_STOP_TAG)
        try:
            window_stop = None if not stop else window_stop_time(stop)
        except ValueError:  # the version's, not the registry's: refused
            why = f"its tag {WINDOW_STOP_TAG}={str(stop)[:100]!r} is not an ISO 8601 time"
            return ModelRef(label, version, None, refused=why, incarnation=incarnation)
        registered = datetime.fromtimestamp(created_ms / 1000, UTC)
        if window_stop is not None and created_ms > 0 and window_stop > registered + CLOCK_SKEW:
            # a window ends before its model is trained: a later end made every reward of
            # the version's own decisions "not served" (before the end), none learnt
            why = (
                f"its tag {WINDOW_STOP_TAG}={str(stop)[:40]!r} is after the version was "
                f"registered ({registered.isoformat()}): no window ends after its model"
            )
            return ModelRef(label, version, None, refused=why, incarnation=incarnation)
        return ModelRef(
            label,
            version,
            window_stop,
            digest=digest,
            incarnation=incarnation,
            not_before=registered - CLOCK_SKEW if created_ms > 0 else None,
        )

    def load(self, ref: ModelRef) -> Policy:
        size = self._reader.state_size(ref.locator)
        if size is not None and size > self.admission.max_bytes:
            # refused before the download: the loader thread (alias moves, rollbacks)
            # waited for all of it, and only then for the same refusal
            raise AdmissionError(
                f"the state file has {size} bytes; the limit is {self.admission.max_bytes}."
            )
        with tempfile.TemporaryDirectory(prefix="banditops-model-") as tmp:
            path = self._reader.download_state(ref.locator, tmp)
            policy = self.admission.registered_policy(path, ref.digest)
        policy.model_version = ref.version
        return policy

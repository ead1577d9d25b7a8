"""A real MLflow registry of many versions, made fast, and a count of the client's reads.

:func:`many_versions` registers versions as the retrain leaves them where a listing reads
them (a run in the training experiment with OPE metrics and parameters, a version of
that run with tags, aliases on old versions) without logging a model for each: a
listing of a year of nightly versions is tested in seconds. :func:`count_calls` counts
the calls of :class:`mlflow.MlflowClient` methods on the real client (nothing is
mocked), in whatever process object makes them (the CLI's, the page's).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import pytest
from mlflow import MlflowClient
from mlflow.entities import Metric, Param

from modelregistry.registry import ModelRegistry

#: What a listing reads per version from its run.
RUN_READS = ("get_run", "search_runs")


def version_metric(number: int) -> float:
    """The DR estimate :func:`many_versions` logs with version ``number``'s run."""
    return round(0.001 * number, 6)


def many_versions(registry: ModelRegistry, count: int, aliases: Mapping[str, int]) -> None:
    """Versions 1 … ``count`` of ``registry``'s model, each from its own run of the
    training experiment (metrics ``ope.candidate.dr.*``, parameter ``algorithm``, tag
    ``run_key``), and ``aliases`` (alias → version number) set on them."""
    client = registry.client
    experiment = registry._experiment_id()
    client.create_registered_model(registry.model_name)
    for number in range(1, count + 1):
        run_id = client.create_run(experiment, run_name=f"night-{number}").info.run_id
        value = version_metric(number)
        client.log_batch(
            run_id,
            metrics=[
                Metric(f"ope.candidate.dr.{key}", value, 0, 0)
                for key in ("value", "ci_low", "ci_high")
            ],
            params=[Param("algorithm", "linucb")],
        )
        client.set_terminated(run_id)
        client.create_model_version(
            registry.model_name,
            source=f"/nowhere/{number}",
            run_id=run_id,
            tags={"run_key": f"night-{number}"},
        )
    for alias, number in aliases.items():
        client.set_registered_model_alias(registry.model_name, alias, str(number))


def count_calls(
    monkeypatch: pytest.MonkeyPatch, names: Iterable[str] = RUN_READS
) -> dict[str, int]:
    """A dict that counts, from now on, the calls of the :class:`~mlflow.MlflowClient`
    methods ``names`` (each still does what it did)."""
    calls = dict.fromkeys(names, 0)
    for name in calls:
        real = getattr(MlflowClient, name)

        def counted(
            self: MlflowClient, *args: Any, _real: Any = real, _name: str = name, **kw: Any
        ) -> Any:
            calls[_name] += 1
            return _real(self, *args, **kw)

        monkeypatch.setattr(MlflowClient, name, counted)
    return calls

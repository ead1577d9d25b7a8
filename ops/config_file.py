"""The workspace file ``banditops.toml``: written (``config init``, the demo) and explained
(``config show``: every setting's effective value and where it came from).

Reading the file is the settings classes' job (:class:`eventstore.settings.WorkspaceFileSource`);
this module knows every class (:data:`ops.config_reference.SETTINGS_CLASSES`), so it can put
each setting in its table and list the effective values of all of them.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import SecretStr
from pydantic_core import PydanticUndefined

from eventstore.settings import (
    SECRET_PATH,
    SECTIONS,
    CoreSettings,
    env_name,
    section_fields,
    workspace_file,
    workspace_of,
)
from eventstore.text import redact_credentials, webhook_shown
from ops.config_reference import SETTINGS_CLASSES

HEADER = """\
# banditops workspace configuration: read by the service, the CLI, the DAG tasks and the demo
# whenever this folder is the workspace (BANDITOPS_WORKSPACE or --workspace).
# Precedence: command-line options > BANDITOPS_<NAME> environment variables > this file >
# defaults. Keys are setting names (`banditops config reference`); a key its table does not
# know is an error. Relative paths are relative to this folder.
"""


def owners() -> dict[str, str]:
    """``{field: section}`` over every settings class."""
    out: dict[str, str] = {}
    for cls, _ in SETTINGS_CLASSES:
        for section, names in section_fields(cls).items():
            out.update(dict.fromkeys(names, section))
    return out


def toml_value(value: Any) -> str:
    """``value`` as a TOML value (strings, numbers, booleans, paths, lists, tables)."""
    if isinstance(value, SecretStr):
        value = value.get_secret_value()
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"a setting must be a finite number; got {value!r}.")
        return repr(value)
    if isinstance(value, (str, Path)):
        return json.dumps(str(value))  # a JSON string is a TOML basic string
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        items = ", ".join(f"{json.dumps(str(k))} = {toml_value(v)}" for k, v in value.items())
        return "{" + items + "}"
    raise ValueError(f"cannot write {value!r} ({type(value).__name__}) to a TOML file.")


def render(values: Mapping[str, Any], template: bool = False) -> str:
    """The file that sets ``values`` (``{field: value}``); with ``template``, every other
    setting is listed too, commented out with its default.

    Raises
    ------
    ValueError
        For a name that is no setting, for ``workspace``, or a value TOML cannot hold.
    """
    where = owners()
    unknown = sorted(set(values) - set(where))
    if unknown:
        raise ValueError(f"unknown setting {unknown[0]!r}; expected some of {sorted(where)}.")
    if "workspace" in values:
        raise ValueError("'workspace' cannot be set in the workspace file (it is its folder).")
    lines = [HEADER]
    for section in SECTIONS:
        names = [n for n, s in where.items() if s == section and n != "workspace"]
        body = [f"{n} = {toml_value(values[n])}" for n in names if n in values]
        if template:
            body = []
            for name in names:
                if name in values:
                    body.append(f"{name} = {toml_value(values[name])}")
                else:
                    default = _declared_default(name)
                    shown = "(unset)" if default is None else toml_value(default)
                    body.append(f"# {name} = {shown}")
        if body:
            lines += [f"[{section}]", *body, ""]
    return "\n".join(lines)


def _declared_default(name: str) -> Any:
    for cls, _ in SETTINGS_CLASSES:
        info = cls.model_fields.get(name)
        if info is not None:
            if info.default_factory is not None:
                return info.default_factory()  # type: ignore[call-arg]
            return None if info.default is PydanticUndefined else info.default
    raise KeyError(name)


def write(workspace: Path, values: Mapping[str, Any], template: bool = False) -> Path:
    """Write ``<workspace>/banditops.toml`` setting ``values``; returns its path. The values
    are checked by every settings class before the file is written, and the file by
    reading it back."""
    for cls, _ in SETTINGS_CLASSES:  # before anything is written: a refused value leaves
        # no file behind, and as arguments the environment cannot mask them
        cls(workspace=workspace, **{k: v for k, v in values.items() if k in cls.model_fields})
    path = workspace_file(workspace)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(render(values, template), encoding="utf-8")
    tmp.replace(path)
    for cls, _ in SETTINGS_CLASSES:
        cls(workspace=workspace)  # raises on a value its class refuses
    return path


@dataclass(frozen=True)
class Effective:
    """One setting as a process here sees it."""

    variable: str
    section: str
    value: Any
    origin: str


def effective(workspace: Path | None = None) -> list[Effective]:
    """Every setting's effective value (secrets masked) and where it came from:
    ``argument`` (the workspace given here), ``env``, ``file`` or ``default``."""
    init: dict[str, Any] = {} if workspace is None else {"workspace": workspace}
    where = owners()
    rows: dict[str, Effective] = {}
    for cls, _ in SETTINGS_CLASSES:
        if not issubclass(cls, CoreSettings):
            raise TypeError(f"{cls.__name__} must extend CoreSettings.")
        values = cls(**init).model_dump(mode="json")  # a SecretStr comes out masked
        for name, origin in cls.origins(**init).items():
            if isinstance(values[name], str):  # and a URL without its password
                values[name] = redact_credentials(values[name])
                if SECRET_PATH in cls.model_fields[name].metadata:  # a webhook: its host
                    values[name] = webhook_shown(values[name])
            rows.setdefault(
                name,
                Effective(env_name(name), where[name], values[name], origin),
            )
    return list(rows.values())


def file_in_effect(workspace: Path | None = None) -> Path:
    """The workspace file the settings read (it need not exist)."""
    init = {} if workspace is None else {"workspace": workspace}
    return workspace_file(workspace_of(init)).resolve()

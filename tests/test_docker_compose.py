"""``docker/`` against the code: no Docker engine runs here, so nothing is built; instead
every name, port, database and command the compose file and the Dockerfiles use is checked
against what the code, the settings and the installed Airflow / MLflow accept.

Each check is a function of a :class:`Project` (the files' texts) that returns the
problems it finds; the tests assert none on the real files, and that typical typos
(mutations of the real files) are found.
"""

from __future__ import annotations

import configparser
import fnmatch
import importlib.util
import json
import os
import re
import shlex
import subprocess
import sys
import tomllib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import click
import pytest
import yaml
from packaging.requirements import Requirement
from pydantic import TypeAdapter, ValidationError
from sqlalchemy.engine import make_url

from monitoring.settings import MonitorSettings
from ops.config_reference import all_fields
from serving.settings import Settings
from training.settings import PipelineSettings

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "docker"
COMPOSE = "docker/docker-compose.yml"
ENV_EXAMPLE = "docker/.env.example"
INIT_SCRIPT = "docker/postgres-init.sh"
SERVING_DOCKERFILE = "docker/serving.Dockerfile"
AIRFLOW_DOCKERFILE = "docker/airflow.Dockerfile"
MLFLOW_DOCKERFILE = "docker/mlflow.Dockerfile"
CONSTRAINTS = "docker/constraints.txt"
FILES = (
    COMPOSE,
    ENV_EXAMPLE,
    INIT_SCRIPT,
    SERVING_DOCKERFILE,
    AIRFLOW_DOCKERFILE,
    MLFLOW_DOCKERFILE,
    CONSTRAINTS,
    "Makefile",
)
#: Images that install torch (the MLflow server's does not).
TORCH_DOCKERFILES = (SERVING_DOCKERFILE, AIRFLOW_DOCKERFILE)


def _compose_harness() -> Any:
    """docker/compose_test.py (a script, not a package), loaded as a module."""
    spec = importlib.util.spec_from_file_location(
        "compose_test", Path(__file__).resolve().parents[1] / "docker/compose_test.py"
    )
    assert spec is not None and spec.loader is not None
    module = sys.modules.get("compose_test")
    if module is None:  # its dataclasses look their module up by name
        module = sys.modules["compose_test"] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    return module


#: What the service image must leave out: the list `make compose-test` checks its `pip
#: list` against (one list; the requirements here are checked against the same one).
NOT_IN_SERVING: tuple[str, ...] = _compose_harness().NOT_IN_SERVING
#: Ports of the third-party servers (their images' defaults).
FIXED_PORTS = {"postgres": 5432, "redis": 6379}
#: What each role needs set explicitly in production (beyond the settings' defaults).
REQUIRED = {
    "serving": ("DATABASE_URL", "MLFLOW_TRACKING_URI", "API_TOKEN", "USER_SALT", "MODEL_NAME"),
    "airflow": ("DATABASE_URL", "MLFLOW_TRACKING_URI", "MODEL_NAME", "RUNS_DIR", "SERVICE_URL"),
}
#: Settings every banditops process must agree on.
SHARED = ("DATABASE_URL", "MLFLOW_TRACKING_URI", "MODEL_NAME")


# ---------------------------------------------------------------------- reading the files
_REF = re.compile(
    r"\$(?:(?P<escaped>\$)|\{(?P<braced>[A-Za-z_]\w*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}"
    r"|(?P<plain>[A-Za-z_]\w*))"
)


def interpolate(text: str, env: dict[str, str], problems: list[str], where: str) -> str:
    """Compose's interpolation of ``text`` with ``env`` (``$$`` → ``$``, ``${X:-d}``,
    ``${X-d}``, ``${X:?e}``, ``${X?e}``, ``${X}``, ``$X``); problems for undefined names."""

    def sub(match: re.Match[str]) -> str:
        if match.group("escaped"):
            return "$"
        name = match.group("braced") or match.group("plain")
        op, arg = match.group("op"), match.group("arg") or ""
        value = env.get(name)
        if op == ":-":
            return value if value else arg
        if op == "-":
            return value if value is not None else arg
        if op in (":?", "?") and (value is None or (op == ":?" and not value)):
            problems.append(
                f"{where}: ${{{name}}} is required ({arg}) but .env.example leaves it unset"
            )
            return ""
        if value is None:
            problems.append(f"{where}: ${name} is not in .env.example and has no default")
            return ""
        return value

    return _REF.sub(sub, text)


def referenced_variables(text: str) -> dict[str, bool]:
    """Variables ``text`` interpolates, each with whether it has a default."""
    out: dict[str, bool] = {}
    for match in _REF.finditer(text):
        if match.group("escaped"):
            continue
        name = match.group("braced") or match.group("plain")
        out[name] = out.get(name, False) or match.group("op") in (":-", "-")
    return out


def parse_env_file(text: str) -> dict[str, str]:
    env = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, sep, value = line.partition("=")
            if sep:
                env[key.strip()] = value.strip()
    return env


@dataclass(frozen=True)
class Dockerfile:
    """The instructions of a Dockerfile (continuations joined, comments dropped)."""

    path: str
    text: str

    @cached_property
    def instructions(self) -> list[tuple[str, str]]:
        out, buffer = [], ""
        for raw in self.text.splitlines():
            line = raw.strip()
            if not buffer and (not line or line.startswith("#")):
                continue
            if line.endswith("\\"):
                buffer += line[:-1] + " "
                continue
            buffer += line
            keyword, _, rest = buffer.strip().partition(" ")
            out.append((keyword.upper(), rest.strip()))
            buffer = ""
        return out

    def all(self, keyword: str) -> list[str]:
        return [rest for kw, rest in self.instructions if kw == keyword]

    @cached_property
    def args(self) -> dict[str, str]:
        out = {}
        for rest in self.all("ARG"):
            name, _, default = rest.partition("=")
            out.setdefault(name, default)
        return out

    @cached_property
    def env(self) -> dict[str, str]:
        out = {}
        for rest in self.all("ENV"):
            for item in shlex.split(rest):
                key, _, value = item.partition("=")
                out[key] = value
        return out

    @cached_property
    def base_image(self) -> str:
        image = self.all("FROM")[0].split()[0]
        return re.sub(r"\$\{(\w+)\}", lambda m: self.args.get(m.group(1), ""), image)

    def copies(self) -> list[tuple[list[str], str]]:
        """``(sources, destination)`` of every COPY from the build context."""
        out = []
        for rest in self.all("COPY"):
            parts = shlex.split(rest)
            if any(p.startswith("--from=") for p in parts):
                continue
            parts = [p for p in parts if not p.startswith("--")]
            out.append((parts[:-1], parts[-1]))
        return out

    def exec_form(self, keyword: str) -> list[str]:
        rest = self.all(keyword)[-1]
        if keyword == "HEALTHCHECK":
            rest = rest[rest.index("CMD") + 3 :].strip()
        return list(json.loads(rest))


@dataclass(frozen=True)
class Project:
    """The texts of ``docker/``'s files (overridable, for the mutation tests)."""

    texts: dict[str, str] = field(default_factory=dict)

    @classmethod
    def load(cls) -> Project:
        return cls({name: (ROOT / name).read_text() for name in FILES})

    def mutated(self, name: str, old: str, new: str) -> Project:
        text = self.texts[name]
        assert text.count(old) == 1, f"{old!r} must occur once in {name}"
        return replace(self, texts={**self.texts, name: text.replace(old, new)})

    @cached_property
    def env_example(self) -> dict[str, str]:
        return parse_env_file(self.texts[ENV_EXAMPLE])

    @cached_property
    def interpolation_problems(self) -> list[str]:
        problems: list[str] = []
        interpolate(self.texts[COMPOSE], self.env_example, problems, COMPOSE)
        return problems

    @cached_property
    def compose(self) -> dict[str, Any]:
        raw = yaml.safe_load(self.texts[COMPOSE])
        problems: list[str] = []

        def resolve(value: Any) -> Any:
            if isinstance(value, str):
                return interpolate(value, self.env_example, problems, COMPOSE)
            if isinstance(value, dict):
                return {k: resolve(v) for k, v in value.items()}
            if isinstance(value, list):
                return [resolve(v) for v in value]
            return value

        return dict(resolve(raw))

    @property
    def services(self) -> dict[str, dict[str, Any]]:
        return dict(self.compose["services"])

    def dockerfile_of(self, service: str) -> Dockerfile | None:
        build = self.services[service].get("build")
        if build is None:
            return None
        path = (DOCKER / build["context"] / build["dockerfile"]).resolve()
        rel = str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)
        return Dockerfile(rel, self.texts.get(rel) or path.read_text())

    def role(self, service: str) -> str | None:
        dockerfile = self.dockerfile_of(service)
        if dockerfile is None:
            return None
        return {SERVING_DOCKERFILE: "serving", AIRFLOW_DOCKERFILE: "airflow"}.get(dockerfile.path)

    def environment(self, service: str) -> dict[str, str]:
        """The container's environment: the image's ENV, then the service's."""
        dockerfile = self.dockerfile_of(service)
        env = dict(dockerfile.env) if dockerfile else {}
        declared = self.services[service].get("environment") or {}
        if isinstance(declared, list):
            declared = dict(item.partition("=")[::2] for item in declared)
        env.update({k: "" if v is None else str(v) for k, v in declared.items()})
        return env

    def command(self, service: str) -> list[str]:
        command = self.services[service].get("command")
        if command is None:
            dockerfile = self.dockerfile_of(service)
            return dockerfile.exec_form("CMD") if dockerfile else []
        return shlex.split(command) if isinstance(command, str) else [str(c) for c in command]

    def healthcheck(self, service: str) -> str | None:
        check = self.services[service].get("healthcheck")
        if not check or check.get("disable"):
            return None
        test = check["test"]
        return test if isinstance(test, str) else " ".join(str(t) for t in test[1:])

    @cached_property
    def created_databases(self) -> dict[str, dict[str, str]]:
        """Database → ``{"owner", "password_env"}`` from the init script."""
        script = self.texts[INIT_SCRIPT]
        variables = dict(re.findall(r'-v\s+(\w+)="\$(\w+)"', script))
        passwords = {
            role: variables.get(var, "")
            for role, var in re.findall(r"CREATE ROLE (\w+) LOGIN PASSWORD :'(\w+)'", script)
        }
        return {
            db: {"owner": owner, "password_env": passwords.get(owner, "")}
            for db, owner in re.findall(r"CREATE DATABASE (\w+) OWNER (\w+)", script)
        }


def option(args: list[str], name: str) -> str | None:
    """The value after ``name`` in an argument list."""
    return args[args.index(name) + 1] if name in args and args.index(name) + 1 < len(args) else None


def urls_in(value: str) -> list[str]:
    return re.findall(r"\b[a-z][a-z0-9+.-]*://[^\s\"']+", value)


def airflow_config_options() -> dict[str, dict[str, Any]]:
    """Airflow's own option catalogue (config.yml) plus the providers' fallback defaults,
    read from the installed package without importing Airflow (it configures itself on
    import)."""
    spec = importlib.util.find_spec("airflow")
    assert spec is not None and spec.submodule_search_locations
    templates = Path(next(iter(spec.submodule_search_locations))) / "config_templates"
    catalogue = yaml.safe_load((templates / "config.yml").read_text())
    options = {
        s: {k: o.get("default") for k, o in d["options"].items()} for s, d in catalogue.items()
    }
    fallback = configparser.ConfigParser(interpolation=None)
    fallback.read(templates / "provider_config_fallback_defaults.cfg")
    for section in fallback.sections():
        options.setdefault(section, {}).update(dict(fallback.items(section)))
    return options


# ---------------------------------------------------------------------- the checks
def check_variables(p: Project) -> list[str]:
    """Every interpolated variable is in .env.example or has a default; nothing in
    .env.example is unused (COMPOSE_* variables are read by compose itself)."""
    problems = list(p.interpolation_problems)
    used = referenced_variables(p.texts[COMPOSE])
    problems += [
        f"{ENV_EXAMPLE}: {name} is not used by the compose file"
        for name in p.env_example
        if name not in used and not name.startswith("COMPOSE_")
    ]
    return problems


@contextmanager
def banditops_environment(env: dict[str, str]) -> Iterator[None]:
    """``os.environ`` with exactly these ``BANDITOPS_*`` variables (restored after)."""
    saved = {k: v for k, v in os.environ.items() if k.startswith("BANDITOPS_")}
    for key in saved:
        del os.environ[key]
    os.environ.update({k: v for k, v in env.items() if k.startswith("BANDITOPS_")})
    try:
        yield
    finally:
        for key in [k for k in os.environ if k.startswith("BANDITOPS_")]:
            del os.environ[key]
        os.environ.update(saved)


def check_settings(p: Project) -> list[str]:
    """BANDITOPS_* names are settings fields, their values validate, the required ones are
    set, and every banditops process agrees on the shared ones."""
    fields = {f"BANDITOPS_{name.upper()}" for name in all_fields()}
    problems = []
    names = set(p.env_example)
    for service in p.services:
        names |= set(p.environment(service))
    for dockerfile in (SERVING_DOCKERFILE, AIRFLOW_DOCKERFILE):
        names |= set(Dockerfile(dockerfile, p.texts[dockerfile]).env)
    problems += [
        f"{name} is not a setting (eventstore/, serving/, training/, monitoring/settings.py)"
        for name in sorted(n for n in names if n.startswith("BANDITOPS_") and n not in fields)
    ]
    shared: dict[str, dict[str, str]] = {}
    for service in p.services:
        role = p.role(service)
        env = {k: v for k, v in p.environment(service).items() if k.startswith("BANDITOPS_")}
        if role is None or not env:
            continue
        # .env.example's placeholders are refused by name (the next test): replaced, as
        # its first line asks, by secrets of one's own
        env = {k: re.sub(r"change-me[\w-]*", "own-secret-0123456789", v) for k, v in env.items()}
        models = (PipelineSettings, MonitorSettings) if role == "airflow" else (Settings,)
        with banditops_environment(env):
            for model in models:
                try:
                    model()
                except ValidationError as exc:
                    problems.append(f"{service}: invalid settings: {exc}")
        needed = REQUIRED[role] if service in ("serving", "airflow-worker") else ()
        problems += [
            f"{service}: BANDITOPS_{name} must be set"
            for name in needed
            if not env.get(f"BANDITOPS_{name}")
        ]
        for name in SHARED:
            if f"BANDITOPS_{name}" in env:
                shared.setdefault(name, {})[service] = env[f"BANDITOPS_{name}"]
    for name, values in shared.items():
        if len(set(values.values())) > 1:
            problems.append(f"BANDITOPS_{name} differs between services: {values}")
    return problems


def check_defaults(p: Project) -> list[str]:
    """A setting's value written in ``.env.example`` or as a compose default
    (``${BANDITOPS_X:-value}``) is the setting's own default: those values only show the
    operator the knob, and a copy that differs would override the code's default in the
    stack without anyone deciding it. Secrets and values with no default are exempt."""
    fields = {
        f"BANDITOPS_{name.upper()}": model.model_fields[name]
        for model in (PipelineSettings, MonitorSettings, Settings)
        for name in model.model_fields
    }
    written = [(ENV_EXAMPLE, name, value) for name, value in p.env_example.items()]
    written += [
        (COMPOSE, m.group("braced"), m.group("arg") or "")
        for m in _REF.finditer(p.texts[COMPOSE])
        if m.group("op") == ":-" and m.group("braced")
    ]
    problems = []
    for where, name, value in written:
        info = fields.get(name)
        if info is None or info.is_required() or info.default is None:
            continue
        try:
            parsed = TypeAdapter(info.annotation).validate_python(value)
        except ValidationError:
            continue  # check_settings names a value that does not validate
        if parsed != info.default:
            problems.append(
                f"{where}: {name}={value} restates the setting's default as {parsed!r}, "
                f"but the default is {info.default!r}"
            )
    return problems


def check_databases(p: Project) -> list[str]:
    """Every PostgreSQL URL names a database the init script creates, as its owner, with
    the password the postgres container gives that role."""
    databases = p.created_databases
    postgres_env = p.environment("postgres")
    problems = []
    for service in p.services:
        values = list(p.environment(service).values()) + p.command(service)
        for url in (u for v in values for u in urls_in(v) if u.startswith("postgresql")):
            parsed = make_url(url)
            if parsed.host != "postgres":
                problems.append(f"{service}: {url} does not point at the postgres service")
            created = databases.get(parsed.database or "")
            if created is None:
                problems.append(
                    f"{service}: database {parsed.database!r} is not created by {INIT_SCRIPT} "
                    f"(it creates {sorted(databases)})"
                )
                continue
            if parsed.username != created["owner"]:
                problems.append(
                    f"{service}: {parsed.database} is owned by {created['owner']!r}; the URL "
                    f"logs in as {parsed.username!r}"
                )
            if parsed.password != postgres_env.get(created["password_env"]):
                problems.append(
                    f"{service}: the password of {parsed.username!r} is not the postgres "
                    f"container's {created['password_env'] or '(no variable)'}"
                )
    return problems


def listening_ports(p: Project) -> tuple[dict[str, int], list[str]]:
    """The port each service listens on, from its command (or the configuration it
    reads), and the problems found on the way."""
    problems = []
    airflow = airflow_config_options()
    ports = dict(FIXED_PORTS)
    for service in p.services:
        args, env = p.command(service), p.environment(service)
        if args[:2] == ["banditops", "serve"] or args[:2] == ["mlflow", "server"]:
            value = option(args, "--port")
            if value is None:
                problems.append(f"{service}: give --port explicitly")
                continue
            ports[service] = int(value)
        elif args == ["api-server"]:
            ports[service] = int(env.get("AIRFLOW__API__PORT", airflow["api"]["port"]))
        elif args == ["scheduler"]:
            key = "scheduler_health_check_server_port"
            ports[service] = int(
                env.get(f"AIRFLOW__SCHEDULER__{key.upper()}", airflow["scheduler"][key])
            )
    return ports, problems


def check_ports(p: Project) -> list[str]:
    """Healthchecks, published ports, the image's EXPOSE/CMD/HEALTHCHECK and every URL
    that names a service use the port that service listens on."""
    ports, problems = listening_ports(p)
    for service in p.services:
        port = ports.get(service)
        check = p.healthcheck(service) or ""
        for url in urls_in(check):
            host = urlsplit(url).hostname
            if host in ("localhost", "127.0.0.1") and urlsplit(url).port != port:
                problems.append(f"{service}: healthcheck {url} but the service listens on {port}")
        for mapping in p.services[service].get("ports", []):
            container = int(str(mapping).rsplit(":", 1)[-1].split("/")[0])
            if container != port:
                problems.append(
                    f"{service}: publishes container port {container}, listens on {port}"
                )
        values = list(p.environment(service).values()) + p.command(service)
        for url in (u for v in values for u in urls_in(v)):
            parts = urlsplit(url)
            target = parts.hostname
            if target in ports:
                used = parts.port or {"postgresql": 5432, "redis": 6379}.get(
                    parts.scheme.split("+")[0]
                )
                if used != ports[target]:
                    problems.append(f"{service}: {url} but {target} listens on {ports[target]}")
            elif target in p.services:
                problems.append(f"{service}: {url} names {target}, which listens on no known port")
    dockerfile = Dockerfile(SERVING_DOCKERFILE, p.texts[SERVING_DOCKERFILE])
    cmd_port = int(option(dockerfile.exec_form("CMD"), "--port") or 0)
    exposed = [int(x) for x in dockerfile.all("EXPOSE")]
    health = [urlsplit(u).port for u in urls_in(" ".join(dockerfile.exec_form("HEALTHCHECK")))]
    if exposed != [cmd_port] or health != [cmd_port]:
        problems.append(
            f"{SERVING_DOCKERFILE}: CMD --port {cmd_port}, EXPOSE {exposed}, HEALTHCHECK {health}"
        )
    problems += same_serving_healthcheck(p, dockerfile)
    return problems


def same_serving_healthcheck(p: Project, dockerfile: Dockerfile) -> list[str]:
    """The image's HEALTHCHECK and the compose file's serving healthcheck are one check
    (command and timings): a container run alone is healthy when the stack's would be."""
    check = p.services["serving"].get("healthcheck") or {}
    image_options = dict(
        re.findall(r"--([a-z-]+)=(\S+)", dockerfile.all("HEALTHCHECK")[-1].split("CMD")[0])
    )
    compose_options = {k.replace("_", "-"): str(v) for k, v in check.items() if k != "test"}
    problems = []
    if ["CMD", *dockerfile.exec_form("HEALTHCHECK")] != list(check.get("test", [])):
        problems.append("serving: the compose healthcheck runs another command than the image's")
    if image_options != compose_options:
        problems.append(
            f"serving: healthcheck {compose_options}, image HEALTHCHECK {image_options}"
        )
    return problems


def check_depends_on(p: Project) -> list[str]:
    """depends_on targets exist; ``service_healthy`` ones have a healthcheck,
    ``service_completed_successfully`` ones are one-shot; long-running services have a
    healthcheck."""
    problems = []
    for service, spec in p.services.items():
        one_shot = str(spec.get("restart", "no")) == "no"
        if not one_shot and p.healthcheck(service) is None:
            problems.append(f"{service}: a long-running service without a healthcheck")
        depends = spec.get("depends_on") or {}
        if isinstance(depends, list):
            depends = {name: {"condition": "service_started"} for name in depends}
        for target, rule in depends.items():
            if target not in p.services:
                problems.append(f"{service}: depends on {target!r}, which is no service")
                continue
            condition = rule.get("condition", "service_started")
            if condition == "service_healthy" and p.healthcheck(target) is None:
                problems.append(
                    f"{service}: waits for {target} to be healthy; it has no healthcheck"
                )
            if (
                condition == "service_completed_successfully"
                and str(p.services[target].get("restart", "no")) != "no"
            ):
                problems.append(f"{service}: waits for {target} to complete; it restarts")
    return problems


def _ignored(path: str, patterns: list[str]) -> bool:
    return any(
        fnmatch.fnmatch(path, pat) or fnmatch.fnmatch(path, pat.removeprefix("**/"))
        for pat in patterns
    )


def project_packages() -> list[str]:
    """The top-level packages pyproject.toml installs (``include`` patterns ``name*``)."""
    found = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    return [pattern.rstrip("*") for pattern in found["packages"]["find"]["include"]]


def check_images(p: Project) -> list[str]:
    """Builds name existing Dockerfiles; their COPY sources exist and are not ignored;
    torch comes from the CPU index in the project's range; Airflow's version is the
    project's; the DAGs folder is where the DAGs are copied."""
    problems = []
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    groups = [project["dependencies"], *project.get("optional-dependencies", {}).values()]
    deps = {Requirement(d).name: Requirement(d) for group in groups for d in group}
    built = set()
    for service, spec in p.services.items():
        build = spec.get("build")
        if build is None:
            if ":" not in spec["image"] or spec["image"].endswith(":latest"):
                problems.append(f"{service}: pin the image {spec['image']!r} to a version")
            continue
        path = DOCKER / build["context"] / build["dockerfile"]
        if not path.is_file():
            problems.append(f"{service}: builds from {path}, which does not exist")
            continue
        built.add(p.dockerfile_of(service).path)  # type: ignore[union-attr]
    for name in sorted(built):
        dockerfile = Dockerfile(name, p.texts[name])
        ignore_file = ROOT / f"{name}.dockerignore"
        patterns = [
            line.strip()
            for line in (ignore_file.read_text().splitlines() if ignore_file.exists() else [])
            if line.strip() and not line.startswith("#")
        ]
        for sources, _ in dockerfile.copies():
            for source in sources:
                if not (ROOT / source).exists():
                    problems.append(f"{name}: COPY {source}: no such file in the build context")
                elif _ignored(source, patterns):
                    problems.append(f"{name}: COPY {source}, which the .dockerignore excludes")
        runs = " ".join(dockerfile.all("RUN"))
        if "pip install --no-deps" in runs:  # installs the project: all of its packages
            copied = {source for sources, _ in dockerfile.copies() for source in sources}
            missing = sorted(set(project_packages()) - copied)
            if missing:
                problems.append(
                    f"{name}: installs the project without its packages {missing} "
                    "(pyproject.toml [tool.setuptools.packages.find])"
                )
        if name not in TORCH_DOCKERFILES:
            if "torch" in runs or "TORCH" in runs:
                problems.append(f"{name}: installs torch, which it does not need")
            continue
        # torch by default from the CPU index in the project's range (build arguments)
        spec = Requirement(dockerfile.args.get("TORCH_SPEC", "").strip('"') or "none")
        cpu_index = "download.pytorch.org/whl/cpu" in dockerfile.args.get("TORCH_PIP_ARGS", "")
        installs = '${TORCH_PIP_ARGS} "${TORCH_SPEC}"' in runs
        if (
            spec.name != "torch"
            or str(spec.specifier) != str(deps["torch"].specifier)
            or not cpu_index
            or not installs
        ):
            problems.append(
                f"{name}: install torch{deps['torch'].specifier} once, from the CPU index; "
                f"got {spec}"
            )
    airflow = Dockerfile(AIRFLOW_DOCKERFILE, p.texts[AIRFLOW_DOCKERFILE])
    version = airflow.args.get("AIRFLOW_VERSION", "")
    if not deps["apache-airflow"].specifier.contains(version):
        problems.append(
            f"{AIRFLOW_DOCKERFILE}: Airflow {version} is outside {deps['apache-airflow']}"
        )
    airflow_install = " ".join(airflow.all("RUN")) + " " + airflow.args.get("REQUIREMENTS", "")
    if not _installs(airflow_install, "apache-airflow-providers-celery"):
        problems.append(f"{AIRFLOW_DOCKERFILE}: the CeleryExecutor needs the Celery provider")
    dags_to = [dest for sources, dest in airflow.copies() if sources == ["dags"]]
    if dags_to != [airflow.env.get("AIRFLOW__CORE__DAGS_FOLDER")]:
        problems.append(
            f"{AIRFLOW_DOCKERFILE}: DAGs copied to {dags_to}, DAGs folder "
            f"{airflow.env.get('AIRFLOW__CORE__DAGS_FOLDER')}"
        )
    serving = Dockerfile(SERVING_DOCKERFILE, p.texts[SERVING_DOCKERFILE])
    selected = serving.args.get("REQUIREMENTS", "")
    if "${REQUIREMENTS}" not in " ".join(serving.all("RUN")):
        problems.append(f"{SERVING_DOCKERFILE}: install what REQUIREMENTS selects")
    chosen = subprocess.run(
        [
            sys.executable,
            str(ROOT / "docker" / "requirements.py"),
            *shlex.split(selected.strip("\"'")),
        ],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    ).stdout
    installed = {
        re.split(r"[<>=!~\[; ]", line.strip())[0].lower()
        for line in chosen.splitlines()
        if line.strip()
    }
    for name in NOT_IN_SERVING:
        if name in installed:
            problems.append(f"{SERVING_DOCKERFILE}: the service image should leave {name} out")
    return problems


def check_airflow_options(p: Project) -> list[str]:
    """Every AIRFLOW__SECTION__KEY is an option of the installed Airflow (or of a provider
    with fallback defaults); Celery runs with a Redis broker and a PostgreSQL result
    backend."""
    options = airflow_config_options()
    problems = []
    airflow_services = [s for s in p.services if p.role(s) == "airflow"]
    for service in airflow_services:
        env = p.environment(service)
        for name in env:
            if not name.startswith("AIRFLOW__"):
                continue
            section, _, key = name.removeprefix("AIRFLOW__").lower().partition("__")
            if key not in options.get(section, {}):
                problems.append(f"{service}: {name} is not an Airflow option ([{section}] {key})")
        if env.get("AIRFLOW__CORE__EXECUTOR") != "CeleryExecutor":
            problems.append(f"{service}: the executor must be the CeleryExecutor")
        broker = env.get("AIRFLOW__CELERY__BROKER_URL", "")
        if urlsplit(broker).hostname != "redis":
            problems.append(
                f"{service}: the Celery broker must be the redis service; got {broker!r}"
            )
        backend = env.get(
            "AIRFLOW__CELERY__RESULT_BACKEND",
            "db+" + env.get("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", ""),
        )
        if not backend.startswith("db+postgresql"):
            problems.append(
                f"{service}: the Celery result backend must be PostgreSQL; got {backend!r}"
            )
        execution = env.get("AIRFLOW__CORE__EXECUTION_API_SERVER_URL", "")
        if urlsplit(execution).hostname not in p.services or not execution.endswith("/execution/"):
            problems.append(
                f"{service}: the execution API URL must name the api-server; got {execution!r}"
            )
        for secret in ("AIRFLOW__API_AUTH__JWT_SECRET", "AIRFLOW__CORE__FERNET_KEY"):
            if not env.get(secret):
                problems.append(f"{service}: {secret} must be set (shared by every component)")
    if (
        len(
            {
                json.dumps(p.environment(s), sort_keys=True)
                for s in airflow_services
                if s not in ("airflow-init", "airflow-worker")
            }
        )
        > 1
    ):
        problems.append("the Airflow components must share one environment")
    return problems


def check_shell_variables(p: Project) -> list[str]:
    """``$VAR`` left for the container's shell (``$$VAR`` in the file) is set in that
    container."""
    problems = []
    for service in p.services:
        env = p.environment(service)
        raw = yaml.safe_load(p.texts[COMPOSE])["services"][service]
        texts = [json.dumps(raw.get("command", "")), json.dumps(raw.get("healthcheck", {}))]
        for text in texts:
            for name in re.findall(r"\$\$\{?([A-Za-z_]\w*)", text):
                if name not in env and name != "HOSTNAME":
                    problems.append(
                        f"{service}: the shell reads ${name}, which the container lacks"
                    )
    return problems


#: Folders whose files must outlive a container, by role: the service's workspace (its
#: journal of acknowledged events and its generated user salt), the pipelines' run folders
#: (shared by every Celery worker).
DURABLE_FOLDERS = {"serving": ("BANDITOPS_WORKSPACE",), "airflow": ("BANDITOPS_RUNS_DIR",)}


def check_volumes(p: Project) -> list[str]:
    """Each durable folder a container is told to use lies on one of its volumes (the
    setting and the mount are two copies of one path: a moved mount lost the journal
    when the container was recreated, and nothing said so)."""
    problems = []
    for service in p.services:
        role = p.role(service)
        if role == "serving" and "serve" not in p.command(service):
            continue  # a one-shot of the image (the migration) keeps nothing
        env = p.environment(service)
        mounts = [
            str(v).split(":")[1] if ":" in str(v) else str(v)
            for v in p.services[service].get("volumes") or []
        ]
        for name in DURABLE_FOLDERS.get(role or "", ()):
            folder = env.get(name)
            if folder is None:
                continue
            if not any(Path(folder).is_relative_to(m) for m in mounts):
                problems.append(f"{service}: {name}={folder} is on none of its volumes {mounts}")
    return problems


def _pins(text: str) -> dict[str, str]:
    pins = {}
    for line in text.splitlines():
        line = line.split("#")[0].strip()
        if line:
            req = Requirement(line)
            pins[req.name.lower()] = str(next(iter(req.specifier)).version)
    return pins


def check_pins(p: Project) -> list[str]:
    """The Airflow image's constraints, Airflow's version argument and the Makefile's
    torch agree with pyproject's ranges (three copies of the versions: a pin outside a
    range failed the image's build, or installed what the tests never ran)."""
    problems = []
    pins = _pins(p.texts[CONSTRAINTS])
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        declared += extra
    for text in declared:
        req = Requirement(text)
        pinned = pins.get(req.name.lower())
        if pinned is not None and not req.specifier.contains(pinned, prereleases=True):
            problems.append(f"{CONSTRAINTS}: {req.name}=={pinned} is outside pyproject's {req}")
        if req.name == "torch":
            torch_spec = re.search(r"^TORCH_SPEC \?= torch==(\S+)$", p.texts["Makefile"], re.M)
            if torch_spec is None or not req.specifier.contains(torch_spec.group(1)):
                found = torch_spec and torch_spec.group(1)
                problems.append(f"Makefile: TORCH_SPEC torch=={found} is outside pyproject's {req}")
    argument = re.search(r"^ARG AIRFLOW_VERSION=(\S+)$", p.texts[AIRFLOW_DOCKERFILE], re.M)
    if argument is None or argument.group(1) != pins.get("apache-airflow"):
        problems.append(
            f"{AIRFLOW_DOCKERFILE}: AIRFLOW_VERSION {argument and argument.group(1)} is not the "
            f"constraints' apache-airflow=={pins.get('apache-airflow')}"
        )
    return problems


CHECKS: dict[str, Callable[[Project], list[str]]] = {
    "variables": check_variables,
    "settings": check_settings,
    "defaults": check_defaults,
    "databases": check_databases,
    "ports": check_ports,
    "depends_on": check_depends_on,
    "images": check_images,
    "airflow_options": check_airflow_options,
    "shell_variables": check_shell_variables,
    "volumes": check_volumes,
    "pins": check_pins,
}


# ---------------------------------------------------------------------- the tests
@pytest.fixture(scope="module")
def project() -> Project:
    return Project.load()


def test_the_compose_file_has_every_service_of_the_platform(project: Project) -> None:
    assert set(project.services) == {
        "postgres",
        "redis",
        "mlflow",
        "serving-migrate",
        "serving",
        "airflow-init",
        "airflow-apiserver",
        "airflow-scheduler",
        "airflow-dag-processor",
        "airflow-triggerer",
        "airflow-worker",
    }
    assert project.command("airflow-worker") == ["celery", "worker"]
    assert project.services["serving"]["deploy"]["replicas"] == "1"
    assert set(project.created_databases) == {"banditops", "mlflow", "airflow"}


@pytest.mark.parametrize("name", list(CHECKS))
def test_the_docker_files_agree_with_the_code(project: Project, name: str) -> None:
    assert CHECKS[name](project) == []


#: The Airflow image's pinned versions, by package.
_PINNED = _pins((ROOT / CONSTRAINTS).read_text())
#: (check, file, text, its typo, a fragment of the problem reported)
TYPOS = [
    (
        "volumes",
        COMPOSE,
        "serving-workspace:/var/lib/banditops\n",
        "serving-workspace:/var/lib/banditops-data\n",
        "serving: BANDITOPS_WORKSPACE=/var/lib/banditops is on none of its volumes",
    ),
    (
        "volumes",
        COMPOSE,
        "banditops-runs:/opt/banditops/runs\n",
        "banditops-runs:/opt/banditops/run-folders\n",
        "BANDITOPS_RUNS_DIR=/opt/banditops/runs is on none of its volumes",
    ),
    ("pins", CONSTRAINTS, f"celery=={_PINNED['celery']}", "celery==5.7.0", "celery==5.7.0 is"),
    (
        "pins",
        AIRFLOW_DOCKERFILE,
        f"AIRFLOW_VERSION={_PINNED['apache-airflow']}\n",
        "AIRFLOW_VERSION=3.2.9\n",
        "AIRFLOW_VERSION 3.2.9 is not",
    ),
    ("pins", "Makefile", "TORCH_SPEC ?= torch==", "TORCH_SPEC ?= torch==9", "torch==9"),
    (
        "variables",
        ENV_EXAMPLE,
        "EVENTS_DB_PASSWORD=",
        "EVENT_DB_PASSWORD=",
        "${EVENTS_DB_PASSWORD} is required",
    ),
    ("variables", ENV_EXAMPLE, "MLFLOW_PORT=5000", "MLFLOW_PROT=5000", "MLFLOW_PROT is not used"),
    (
        "settings",
        COMPOSE,
        "BANDITOPS_MODEL_NAME: ${",
        "BANDITOPS_MODEL_NAM: ${",
        "BANDITOPS_MODEL_NAM is not a setting",
    ),
    (
        "settings",
        ENV_EXAMPLE,
        "BANDITOPS_CANDIDATE_SHARE=0",
        "BANDITOPS_CANDIDATE_SHARE=2",
        "serving: invalid settings",
    ),
    (
        "images",
        SERVING_DOCKERFILE,
        "COPY monitoring monitoring\n",
        "",
        "without its packages ['monitoring']",
    ),
    (
        "defaults",
        ENV_EXAMPLE,
        "BANDITOPS_REWARD_WINDOW_S=86400",
        "BANDITOPS_REWARD_WINDOW_S=86401",
        "BANDITOPS_REWARD_WINDOW_S=86401 restates",
    ),
    (
        "defaults",
        COMPOSE,
        "${BANDITOPS_POLL_INTERVAL_S:-30}",
        "${BANDITOPS_POLL_INTERVAL_S:-31}",
        "BANDITOPS_POLL_INTERVAL_S=31 restates",
    ),
    (
        "settings",
        COMPOSE,
        "      BANDITOPS_USER_SALT:",
        "      BANDITOPS_USER_SALT_X:",
        "BANDITOPS_USER_SALT must be set",
    ),
    (
        "settings",
        AIRFLOW_DOCKERFILE,
        "BANDITOPS_RUNS_DIR=",
        "BANDITOPS_RUN_DIR=",
        "BANDITOPS_RUN_DIR is not a setting",
    ),
    (
        "databases",
        INIT_SCRIPT,
        "CREATE DATABASE mlflow OWNER",
        "CREATE DATABASE mlflows OWNER",
        "database 'mlflow' is not created",
    ),
    (
        "databases",
        INIT_SCRIPT,
        'airflow_password="$AIRFLOW_DB_PASSWORD"',
        'airflow_password="$AIRFLOW_PASSWORD"',
        "the password of 'airflow'",
    ),
    (
        "databases",
        COMPOSE,
        "@postgres:5432/airflow",
        "@postgres:5432/airflw",
        "database 'airflw' is not created",
    ),
    (
        "ports",
        COMPOSE,
        '- "8000"\n      - --workers',
        '- "8001"\n      - --workers',
        "listens on 8001",
    ),
    (
        "ports",
        SERVING_DOCKERFILE,
        "8000/readyz', timeout=4)",
        "8000/healthz', timeout=4)",
        "the compose healthcheck runs another command than the image's",
    ),
    (
        "ports",
        COMPOSE,
        "      retries: 5\n      start_period: 60s\n    depends_on:\n      serving-migrate:",
        "      retries: 3\n      start_period: 60s\n    depends_on:\n      serving-migrate:",
        "image HEALTHCHECK",
    ),
    (
        "ports",
        COMPOSE,
        "BANDITOPS_SERVICE_URL: http://serving:8000",
        "BANDITOPS_SERVICE_URL: http://serving:8080",
        "http://serving:8080 but serving listens on 8000",
    ),
    (
        "ports",
        COMPOSE,
        "BANDITOPS_MLFLOW_TRACKING_URI: http://mlflow:5000",
        "BANDITOPS_MLFLOW_TRACKING_URI: http://mlflow:5001",
        "but mlflow listens on 5000",
    ),
    (
        "ports",
        COMPOSE,
        "localhost:8974/health",
        "localhost:8793/health",
        "healthcheck http://localhost:8793/health",
    ),
    (
        "ports",
        COMPOSE,
        "http://airflow-apiserver:8080/execution/",
        "http://airflow-apiserver:8081/execution/",
        "but airflow-apiserver listens on 8080",
    ),
    ("ports", SERVING_DOCKERFILE, "EXPOSE 8000", "EXPOSE 8080", "EXPOSE [8080]"),
    (
        "depends_on",
        COMPOSE,
        "      serving-migrate:\n        condition",
        "      serving-migrat:\n        condition",
        "'serving-migrat', which is no service",
    ),
    (
        "depends_on",
        COMPOSE,
        "  redis:\n    image: ${REDIS_IMAGE:-redis:7.4-bookworm}\n    healthcheck:",
        "  redis:\n    image: ${REDIS_IMAGE:-redis:7.4-bookworm}\n    x-healthcheck:",
        "redis: a long-running service without a healthcheck",
    ),
    (
        "images",
        SERVING_DOCKERFILE,
        "COPY validation validation",
        "COPY validations validation",
        "COPY validations: no such file",
    ),
    (
        "images",
        AIRFLOW_DOCKERFILE,
        'ARG TORCH_SPEC="torch>=2.5,<2.15"',
        'ARG TORCH_SPEC="torch>=2.5"',
        "install torch",
    ),
    (
        "images",
        SERVING_DOCKERFILE,
        'TORCH_PIP_ARGS="--index-url https://download.pytorch.org/whl/cpu"',
        'TORCH_PIP_ARGS=""',
        "install torch",
    ),
    (
        "images",
        SERVING_DOCKERFILE,
        '"--extra serve ',
        '"--extra train ',
        "should leave great-expectations out",
    ),
    (
        "images",
        AIRFLOW_DOCKERFILE,
        "ARG AIRFLOW_VERSION=3.3.2",
        "ARG AIRFLOW_VERSION=3.2.1",
        "Airflow 3.2.1 is outside",
    ),
    (
        "images",
        AIRFLOW_DOCKERFILE,
        "COPY --chown=airflow:0 dags /opt/banditops/dags",
        "COPY --chown=airflow:0 dags /opt/banditops/dag",
        "DAGs copied to ['/opt/banditops/dag']",
    ),
    (
        "airflow_options",
        COMPOSE,
        "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK",
        "AIRFLOW__SCHEDULER__ENABLE_HEALTHCHECK",
        "[scheduler] enable_healthcheck",
    ),
    (
        "airflow_options",
        COMPOSE,
        "AIRFLOW__API_AUTH__JWT_SECRET",
        "AIRFLOW__API__JWT_SECRET",
        "[api] jwt_secret",
    ),
    (
        "airflow_options",
        COMPOSE,
        "AIRFLOW__CELERY__BROKER_URL: redis://redis",
        "AIRFLOW__CELERY__BROKER_URL: redis://redis-server",
        "the Celery broker must be the redis service",
    ),
    (
        "shell_variables",
        COMPOSE,
        '--password "$${ADMIN_PASSWORD}"',
        '--password "$${ADMIN_PASWORD}"',
        "the shell reads $ADMIN_PASWORD",
    ),
]


@pytest.mark.parametrize(
    ("check", "file", "text", "typo", "problem"), TYPOS, ids=[t[3][:40] for t in TYPOS]
)
def test_a_typo_in_the_docker_files_is_found(
    project: Project, check: str, file: str, text: str, typo: str, problem: str
) -> None:
    found = CHECKS[check](project.mutated(file, text, typo))
    assert any(problem in p for p in found), found


# ---------------------------------------------------------------------- commands
def _click_parse(command: Any, argv: list[str]) -> None:
    """Parse ``argv`` as the command line would (a group takes no options here: its first
    argument names the command); raises the CLI's usage errors. Duck-typed: typer
    vendors its own click, MLflow uses click."""
    if hasattr(command, "list_commands"):
        name, *rest = argv
        sub = command.get_command(command.context_class(command), name)
        if sub is None:
            raise LookupError(f"no such command {name!r}")
        _click_parse(sub, rest)
        return
    command.make_context(command.name or "cli", list(argv))


def test_banditops_and_mlflow_commands_parse_with_the_real_clis(project: Project) -> None:
    import typer.main

    from ops.cli import app

    banditops = typer.main.get_command(app)
    run = 0
    for service in project.services:
        args = project.command(service)
        if args and args[0] == "banditops":
            _click_parse(banditops, args[1:])
            run += 1
    assert run == 2  # serving, serving-migrate
    with pytest.raises(Exception, match="No such option: --prot"):
        _click_parse(banditops, ["serve", "--prot", "8000"])
    with pytest.raises(LookupError, match="no such command 'serv'"):
        _click_parse(banditops, ["serv"])

    from mlflow.cli import cli as mlflow_cli
    from mlflow.server.security_utils import is_allowed_host_header

    args = project.command("mlflow")
    _click_parse(mlflow_cli, args[1:])
    with pytest.raises(click.UsageError, match="--allowed-host"):
        _click_parse(mlflow_cli, ["server", "--allowed-host", "x"])
    # the Host header a banditops client sends is one the server accepts
    allowed = [h.strip() for h in (option(args, "--allowed-hosts") or "").split(",")]
    tracking = project.environment("serving")["BANDITOPS_MLFLOW_TRACKING_URI"]
    assert is_allowed_host_header(allowed, urlsplit(tracking).netloc)
    assert is_allowed_host_header(allowed, "localhost:5000")
    assert not is_allowed_host_header(allowed, "evil.example:5000")


def _installs(run_text: str, package: str) -> bool:
    """Whether pip commands ``run_text`` install ``package``: by name, or through an extra
    of this project (``".[celery]"``) that lists it in pyproject.toml."""
    if package in run_text:
        return True
    extras = re.findall(r"\.\[([a-z0-9_,-]+)\]", run_text) + re.findall(
        r"--extra[ =]([a-z0-9_-]+)", run_text
    )
    optional = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"].get(
        "optional-dependencies", {}
    )
    for extra in extras:
        for name in extra.split(","):
            if any(line.startswith(package) for line in optional.get(name, [])):
                return True
    return False


#: Airflow commands that come from providers (not installed here; in the images).
PROVIDER_COMMANDS = {
    "celery": "apache-airflow-providers-celery",
    "users": "apache-airflow-providers-fab",
}


def _airflow_commands(project: Project) -> list[list[str]]:
    out = []
    for service in project.services:
        if project.role(service) != "airflow":
            continue
        args = project.command(service)
        if args[:2] == ["bash", "-c"]:
            script = re.sub(r"\$\{?\w+\}?", "x", args[2].replace("\\\n", " "))
            lines = [line.strip().removeprefix("if ! ") for line in script.splitlines()]
            out += [
                shlex.split(line.split(" | ")[0])[1:]
                for line in lines
                if line.startswith("airflow ")
            ]
        else:
            out.append(args)
        check = project.healthcheck(service) or ""
        if check.startswith("airflow "):
            out.append(shlex.split(re.sub(r"\$\{?\w+\}?", "x", check))[1:])
    return out


def test_airflow_commands_parse_with_the_installed_airflow_cli(
    project: Project, tmp_path: Path
) -> None:
    commands = _airflow_commands(project)
    assert ["db", "migrate"] in commands and ["dag-processor"] in commands
    core = [c for c in commands if c[0] not in PROVIDER_COMMANDS]
    provided = {c[0] for c in commands if c[0] in PROVIDER_COMMANDS}
    assert provided == {"celery", "users"}
    script = (
        "import json, sys\n"
        "from airflow.cli.cli_parser import get_parser\n"
        "parser, bad = get_parser(), []\n"
        "for argv in json.loads(sys.argv[1]) + [['jobs', 'check', '--job-type', 'NoSuchJob']]:\n"
        "    try:\n"
        "        parser.parse_args(argv)\n"
        "    except SystemExit:\n"
        "        bad.append(argv)\n"
        "print(json.dumps(bad))\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
    env["AIRFLOW_HOME"] = str(tmp_path)
    done = subprocess.run(
        [sys.executable, "-c", script, json.dumps(core)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    # only the deliberately wrong command is refused
    assert json.loads(done.stdout.strip().splitlines()[-1]) == [
        ["jobs", "check", "--job-type", "NoSuchJob"]
    ]
    # the provider commands: the Celery provider is installed by the image; FAB's `users`
    # comes with apache/airflow itself (its default extras)
    assert _installs(project.texts[AIRFLOW_DOCKERFILE], PROVIDER_COMMANDS["celery"])
    # FAB (the auth manager and `airflow users`) is an extra of apache-airflow in the image
    airflow = Dockerfile(AIRFLOW_DOCKERFILE, project.texts[AIRFLOW_DOCKERFILE])
    assert "fab" in airflow.args["AIRFLOW_EXTRAS"].split(",")


# ---------------------------------------------------------------------- the service image
def test_the_service_image_installs_the_serve_group_and_no_airflow() -> None:
    done = subprocess.run(
        [sys.executable, str(DOCKER / "requirements.py"), "--extra", "serve"],
        capture_output=True,
        text=True,
        check=True,
    )
    listed = done.stdout.splitlines()
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert listed == project["dependencies"] + project["optional-dependencies"]["serve"]
    names = {Requirement(d).name for d in listed}
    assert not names & set(NOT_IN_SERVING)
    assert 'ARG REQUIREMENTS="--extra serve ' in (DOCKER / "serving.Dockerfile").read_text()
    refused = subprocess.run(
        [sys.executable, str(DOCKER / "requirements.py"), "--exclude", "apache-airflw"],
        capture_output=True,
        text=True,
    )
    assert refused.returncode == 2 and "names no dependency" in refused.stderr
    swapped = subprocess.run(
        [
            sys.executable,
            str(DOCKER / "requirements.py"),
            *("--extra", "serve", "--replace", "mlflow=mlflow-skinny"),
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    serve = project["optional-dependencies"]["serve"]
    mlflow = next(d for d in serve if Requirement(d).name == "mlflow")
    skinny = [Requirement(d) for d in swapped if Requirement(d).name == "mlflow-skinny"]
    assert [s.specifier for s in skinny] == [Requirement(mlflow).specifier]
    assert not any(Requirement(d).name == "mlflow" for d in swapped)
    only = subprocess.run(
        [
            sys.executable,
            str(DOCKER / "requirements.py"),
            *("--extra", "train", "--only", "mlflow", "--only", "pyyaml"),
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    assert [Requirement(d).name for d in only] == ["mlflow", "pyyaml"]


def test_the_service_runs_without_airflow_installed(tmp_path: Path) -> None:
    """What the service image runs — the ``banditops`` CLI and the app behind ``serve`` —
    imports and serves with every ``airflow`` import refused."""
    script = (
        "import sys\n"
        "class NoAirflow:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'airflow' or name.startswith('airflow.'):\n"
        "            raise ImportError(f'{name} is not in the service image')\n"
        "sys.meta_path.insert(0, NoAirflow())\n"
        "from pathlib import Path\n"
        "from ops.cli import app\n"
        "from serving.app import create_app\n"
        "from serving.settings import Settings\n"
        "from eventstore.engine import make_engine\n"
        "from eventstore.migrate import upgrade\n"
        "from fastapi.testclient import TestClient\n"
        "ws = Path(sys.argv[1])\n"
        "settings = Settings(workspace=ws, database_url=f'sqlite:///{ws / \"e.db\"}',"
        " auth_disabled=True)\n"
        "engine = make_engine(settings.store_url); upgrade(engine); engine.dispose()\n"
        "import time\n"
        "with TestClient(create_app(settings)) as client:\n"
        "    deadline = time.monotonic() + 60\n"
        "    while client.get('/readyz').status_code != 200:\n"
        "        assert time.monotonic() < deadline, 'never ready'\n"
        "        time.sleep(0.1)\n"
        "    body = {'context': [0.1, 0.2], 'candidates': [{'id': 'a', 'features': [1.0]},"
        " {'id': 'b', 'features': [0.0]}]}\n"
        "    assert client.post('/v1/decisions', json=body).status_code == 200\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'airflow'))\n"
    )
    done = subprocess.run(
        [sys.executable, "-W", "ignore", "-c", script, str(tmp_path)],
        cwd=ROOT,
        env={k: v for k, v in os.environ.items() if not k.startswith(("BANDITOPS_", "AIRFLOW"))},
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == "[]"


def test_the_postgres_init_script_is_valid_shell() -> None:
    done = subprocess.run(["sh", "-n", str(DOCKER / "postgres-init.sh")], capture_output=True)
    assert done.returncode == 0, done.stderr
    assert os.access(DOCKER / "postgres-init.sh", os.X_OK)


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("AIRFLOW__API_AUTH__JWT_SECRET", "change-me-jwt-secret"),
        ("AIRFLOW__API__SECRET_KEY", "change-me-api-secret"),
        ("AIRFLOW__CORE__FERNET_KEY", "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="),
    ],
)
def test_the_airflow_image_refuses_the_example_secrets(variable: str, value: str) -> None:
    """With .env.example's JWT secret anyone could sign an admin token (the security
    helper did, and triggered runs through the Bandits page); every Airflow container
    now refuses to start on a placeholder, naming it."""
    script = str(DOCKER / "airflow-entrypoint.sh")
    env = {"PATH": os.environ["PATH"]}
    refused = subprocess.run(
        ["sh", script, "sh", "-c", "echo started"],
        env={**env, variable: value},
        capture_output=True,
        text=True,
        check=False,
    )
    assert refused.returncode == 2 and "started" not in refused.stdout
    assert f"error: {variable} is a placeholder of docker/.env.example" in refused.stderr
    fine = subprocess.run(
        ["sh", script, "sh", "-c", "echo started"],
        env={**env, variable: "a-secret-of-our-own-0123456789"},
        capture_output=True,
        text=True,
        check=True,
    )
    assert fine.stdout.strip() == "started"


def test_the_service_refuses_the_example_secrets(project: Project) -> None:
    """The serving container with .env.example's token and salt left in place refuses to
    start, naming both (before, it served with them)."""
    env = {k: v for k, v in project.environment("serving").items() if k.startswith("BANDITOPS_")}
    with banditops_environment(env), pytest.raises(ValidationError) as refused:
        Settings()
    text = str(refused.value)
    assert "api_token is a placeholder of docker/.env.example" in text
    assert "user_salt is a placeholder of docker/.env.example" in text


def test_mlflow_is_published_on_the_host_s_loopback_only() -> None:
    """It has no authentication here, and whoever writes to its registry decides what
    serves: before, it listened on every interface of the host."""
    services = yaml.safe_load((DOCKER / "docker-compose.yml").read_text())["services"]
    assert services["mlflow"]["ports"] == ["127.0.0.1:${MLFLOW_PORT:-5000}:5000"]

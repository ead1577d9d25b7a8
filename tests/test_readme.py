"""The README is tested against the code: its settings table, its commands and its HTTP
examples."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import numpy as np
import pytest
import typer

from bandit_core import make_policy, save_policy
from ops.cli import app
from ops.config_reference import BEGIN, END, embedded_block, markdown, reference
from tests.serving_helpers import running_client, service_settings

README = Path(__file__).resolve().parents[1] / "README.md"
README_TOKEN = "readme-token-0123456789"


def _readme() -> str:
    return README.read_text(encoding="utf-8")


def _code_blocks(text: str) -> list[str]:
    blocks = re.findall(r"^```(\w*)\n(.*?)^```", text, flags=re.S | re.M)
    return [body for lang, body in blocks if lang in ("", "bash", "sh")]


# ---------------------------------------------------------------------- settings
def test_settings_table_is_the_generated_one() -> None:
    block = embedded_block(_readme())
    assert block is not None, f"README lacks the generated block between {BEGIN!r} and {END!r}"
    assert block == markdown(), (
        "README's settings table is stale: replace the block with `banditops config reference`"
    )


def test_every_setting_is_documented_once() -> None:
    rows = reference()
    envs = [r.env for r in rows]
    assert len(envs) == len(set(envs))
    from ops.config_reference import all_fields

    assert {f"BANDITOPS_{n.upper()}" for n in all_fields()} == set(envs)


def test_a_field_without_description_is_refused() -> None:
    from pydantic_settings import BaseSettings, SettingsConfigDict

    from ops import config_reference

    class Documented(BaseSettings):
        """Example.

        Attributes
        ----------
        alpha : float
            Documented.
        """

        model_config = SettingsConfigDict(env_prefix="X_")
        alpha: float = 1.0
        beta: float = 2.0

    docs = config_reference.attribute_docs(Documented)
    assert docs == {"alpha": ("float", "Documented.")}


def test_bounds_come_from_the_field_never_the_docstring(monkeypatch: pytest.MonkeyPatch) -> None:
    """The reference prints a field's own bounds; a docstring that writes a range (which
    drifted from the Field before) is refused."""
    from pydantic import Field
    from pydantic_settings import BaseSettings, SettingsConfigDict

    from ops import config_reference

    class Bounded(BaseSettings):
        """Example.

        Attributes
        ----------
        share : float
            A share.
        """

        model_config = SettingsConfigDict(env_prefix="X_")
        share: float = Field(0.5, ge=0.0, lt=1.0)

    class Written(Bounded):
        """Example.

        Attributes
        ----------
        cap : float in [0, 1]
            A cap.
        """

        cap: float = Field(0.5, gt=0.0, le=1.0)

    monkeypatch.setattr(config_reference, "SETTINGS_CLASSES", ((Bounded, "x"),))
    assert [r.description for r in config_reference.reference()] == ["(float in [0, 1)) A share."]
    monkeypatch.setattr(config_reference, "SETTINGS_CLASSES", ((Bounded, "x"), (Written, "x")))
    with pytest.raises(ValueError, match=r"docstring writes their bounds.*Written.cap"):
        config_reference.reference()


# ---------------------------------------------------------------------- commands
def _command_paths(text: str) -> list[list[str]]:
    """Word sequences naming ``banditops`` commands in the README's shell blocks."""
    paths: list[list[str]] = []
    for block in _code_blocks(text):
        for line in block.splitlines():
            line = line.split("#", 1)[0]
            if "banditops " not in line or "BANDITOPS" in line.split("banditops ", 1)[0]:
                continue
            after = line.split("banditops ", 1)[1]
            for part in after.split("|"):
                words = re.findall(r"^\s*([a-z][a-z-]*)(?:\s+([a-z][a-z-]*))?", part)
                if words:
                    paths.append([w for w in words[0] if w])
    return paths


def test_every_command_in_the_readme_exists() -> None:
    root = typer.main.get_command(app)
    paths = _command_paths(_readme())
    assert len(paths) >= 20, paths
    for words in paths:
        ctx = type(root.make_context("banditops", ["--help"], resilient_parsing=True))(root)
        command = root
        for i, word in enumerate(words):
            assert hasattr(command, "commands"), (
                f"`banditops {' '.join(words[:i])}` takes no subcommand"
            )
            sub = command.get_command(ctx, word)
            if sub is None:
                assert i > 0, f"README names `banditops {' '.join(words)}`: no such command"
                break  # an argument of the command (e.g. a version)
            command = sub
        assert not hasattr(command, "commands"), f"`banditops {' '.join(words)}` is a group"


# ---------------------------------------------------------------------- HTTP examples
def _curl_requests(text: str) -> list[tuple[str, dict[str, object], bool]]:
    """(path, JSON body, sends the token) of every ``curl … -d '…'`` in the README."""
    out = []
    for block in _code_blocks(text):
        joined = block.replace("\\\n", " ")
        for line in joined.splitlines():
            if not line.strip().startswith("curl") or " -d " not in line:
                continue
            args = shlex.split(line.split("#", 1)[0], posix=True)
            url = next(a for a in args if "localhost:" in a)
            body = json.loads(args[args.index("-d") + 1])
            out.append(("/" + url.split("/", 1)[1], body, "authorization: Bearer" in line))
    return out


def test_every_http_example_is_answered(tmp_path: Path) -> None:
    requests = _curl_requests(_readme())
    assert len(requests) >= 5, requests
    model = make_policy("shared_lints", dim_user=6, dim_arm=4, n_sim=200)
    rng = np.random.default_rng(0)
    model.update_batch(
        rng.standard_normal((30, 6)),
        [f"i{k % 5}" for k in range(30)],
        rng.random(30),
        rng.standard_normal((30, 4)),
    )
    state = save_policy(model, tmp_path / "policy.npz")
    del state
    settings = service_settings(
        tmp_path, model_path=tmp_path / "policy.npz", api_token=README_TOKEN
    )
    event_id = None
    with running_client(settings) as client:
        for path, body, with_token in requests:
            text = json.dumps(body)
            if "EVENT_ID" in text:
                assert event_id is not None, "a reward example precedes every decision"
                text = text.replace("EVENT_ID", event_id)
            headers = {"authorization": f"Bearer {README_TOKEN}"} if with_token else {}
            answer = client.post(
                path, content=text, headers={"content-type": "application/json", **headers}
            )
            assert answer.status_code == 200, (path, body, answer.text)
            data = answer.json()
            if path == "/v1/decisions":
                event_id = data["event_id"]
                assert 0.0 < data["propensity"] <= 1.0
                if body.get("k"):
                    assert len(data["ranking"]) == body["k"]
            elif path == "/v1/rewards":
                assert data["status"] == "applied", data
            elif path == "/v1/decisions/grouped":
                assert [g["group_id"] for g in data["groups"]] == [
                    g["id"]
                    for g in body["groups"]  # type: ignore[union-attr]
                ]


@pytest.mark.parametrize("marker", [BEGIN, END])
def test_markers_appear_once(marker: str) -> None:
    assert _readme().count(marker) == 1

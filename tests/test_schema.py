"""The catalogue: every key of the schema (mlptrain.config) and every rule, broken on purpose.

Generated, not written by hand: each preset of each config group is composed, and for every leaf key a
value of the wrong type is made from the key's declared type; every rule in RULES is broken by its own
examples. Each must end the command (train.py, scripts/compare.py, scripts/predict.py) with exit status
1 and one paragraph that names the key, without a traceback, before any training starts.
"""

import functools
import hashlib
import importlib.metadata
import json
import os
import typing
from collections.abc import Iterator
from pathlib import Path
from types import UnionType
from typing import Any

import pytest
import torch
from omegaconf import DictConfig, OmegaConf

from mlptrain.config import (
    CHECKED_WHERE_USED,
    EXPORT_RULES,
    PREDICT_RULES,
    RULES,
    ExportConfig,
    PredictConfig,
    Rule,
    check,
)
from mlptrain.errors import ConfigError
from tests.conftest import CONF_DIR, ROOT, compose_config, run_in_process

GROUPS = ("model", "data", "loss", "optimizer", "scheduler", "trainer", "logger")
# Every preset as the override that picks it; [] is the default config.
CONTEXTS = [[]] + [[f"{group}={path.stem}"] for group in GROUPS for path in sorted((CONF_DIR / group).glob("*.yaml"))]
ABSENT = object()
WRONG = {int: "abc", float: "abc", bool: "maybe", list: "[abc]"}  # a value of each declared type's wrong kind


def composed(config: str, overrides: list[str]) -> DictConfig:
    return _composed(config, tuple(overrides))


@functools.cache  # the catalogue composes each preset once, not once per key
def _composed(config: str, overrides: tuple[str, ...]) -> DictConfig:
    return compose_config(list(overrides), Path("/tmp/mlptrain-schema-test"), config)


def leaves(node: DictConfig, prefix: str = "") -> Iterator[tuple[str, type | None]]:
    """(dotted key, declared type) of every leaf; the type comes from the node's schema dataclass."""
    schema = OmegaConf.get_type(node)
    hints = typing.get_type_hints(schema) if schema not in (dict, None) else {}
    for key in node:
        if key == "hydra":
            continue
        child = node[key] if not OmegaConf.is_missing(node, key) else None
        if isinstance(child, DictConfig) and OmegaConf.get_type(child) not in (dict, None):
            yield from leaves(child, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", hints.get(key)


def wrong_value(declared: Any) -> str | None:
    """A command-line value that no value of `declared` can be parsed from; None where any text would do."""
    if isinstance(declared, UnionType) or typing.get_origin(declared) is typing.Union:
        declared = next(arg for arg in typing.get_args(declared) if arg is not type(None))
    return WRONG.get(typing.get_origin(declared) or declared)


def catalogue() -> tuple[list[tuple[list[str], str]], set[str]]:
    """(overrides, key the message must name) for every typed leaf in every context; and every leaf seen."""
    cases, seen = {}, set()
    for context in CONTEXTS:
        for key, declared in leaves(composed("train", context)):
            seen.add(key)
            value = wrong_value(declared)
            if value is not None and key not in cases:
                cases[key] = ([*context, f"{key}={value}"], key)
    return list(cases.values()), seen


def context_of(rule: Rule, config: str) -> list[str]:
    """The first preset whose config has the rule's key (e.g. optimizer=sgd for optimizer.momentum)."""
    for context in CONTEXTS:
        if OmegaConf.select(composed(config, context), rule.key, default=ABSENT) is not ABSENT:
            return context
    raise AssertionError(f"no preset has {rule.key}")


def rule_cases(config: str) -> list[tuple[list[str], str]]:
    compare_only = [rule for rule in RULES if rule.key.startswith("baselines")]
    rules = compare_only if config == "compare" else [rule for rule in RULES if rule not in compare_only]
    return [([*context_of(rule, config), *example], rule.key) for rule in rules for example in rule.examples]


def generated() -> dict[str, Any]:
    """The catalogue's cases, generated (composing every preset: seconds) or read from the copy that pytest's
    workers last wrote for the same sources (.pytest_cache/, keyed by a hash of conf/, src/mlptrain/, this file
    and Hydra's and OmegaConf's versions): every worker of every run of the suite would otherwise compose them
    all again at collection."""
    sources = sorted([*CONF_DIR.rglob("*.yaml"), *(ROOT / "src" / "mlptrain").rglob("*.py"), Path(__file__)])
    versions = " ".join(importlib.metadata.version(package) for package in ("hydra-core", "omegaconf")).encode()
    digest = hashlib.sha256(versions + b"".join(str(p.relative_to(ROOT)).encode() + p.read_bytes() for p in sources))
    copy = ROOT / ".pytest_cache" / f"mlptrain-schema-{digest.hexdigest()[:16]}.json"
    if copy.exists():
        return json.loads(copy.read_text())
    type_cases, all_keys = catalogue()
    cases = {"type": type_cases, "keys": sorted(all_keys)}
    cases |= {"rule": rule_cases("train"), "compare": rule_cases("compare")}
    partial = copy.with_name(f"{copy.name}.{os.getpid()}.tmp")
    try:
        copy.parent.mkdir(exist_ok=True)
        partial.write_text(json.dumps(cases))
        os.replace(partial, copy)  # whole or not there, whichever worker writes it
    except OSError:  # a checkout that cannot be written: generated each time, as before
        partial.unlink(missing_ok=True)
    return cases


CASES = generated()
TYPE_CASES = [(overrides, key) for overrides, key in CASES["type"]]
ALL_KEYS = set(CASES["keys"])
RULE_CASES = [(overrides, key) for overrides, key in CASES["rule"]]
COMPARE_RULE_CASES = [(overrides, key) for overrides, key in CASES["compare"]]


def tiered(cases: list[tuple[list[str], str]], every: int = 5) -> list[Any]:
    """Every case for `pytest`; every `every`-th in the fast tier (pytest -m "not slow")."""
    return [
        pytest.param(overrides, key, id=" ".join(overrides), marks=() if i % every == 0 else pytest.mark.slow)
        for i, (overrides, key) in enumerate(cases)
    ]


def assert_refused(status: int, output: str, key: str) -> None:
    assert status == 1, output
    assert "Traceback" not in output, output
    assert key in output, f"the message does not name {key}: {output}"
    assert "Epoch" not in output and "epoch 0" not in output  # refused before training


def hydra_args(tmp_path: Path) -> list[str]:
    return [f"hydra.run.dir={tmp_path}", "hydra.output_subdir=null"]


def test_every_leaf_key_can_be_broken() -> None:
    """A new key needs a type that can be wrong, a rule, or an entry in CHECKED_WHERE_USED: else this fails."""
    typed = {key for _, key in TYPE_CASES}
    ruled = {rule.key for rule in RULES}
    unjudged = ALL_KEYS - typed - ruled - set(CHECKED_WHERE_USED)
    assert not unjudged, f"nothing refuses a bad value of {sorted(unjudged)}: give them a type or a rule"
    assert len(ALL_KEYS) > 60  # the walk found the config, not an empty node


@pytest.mark.parametrize(("overrides", "key"), tiered(TYPE_CASES, every=4))
def test_a_value_of_the_wrong_type_is_refused_at_composition(
    overrides: list[str], key: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert_refused(*run_in_process("train.py", [*overrides, *hydra_args(tmp_path)], capsys), key)


@pytest.mark.parametrize(("overrides", "key"), tiered(RULE_CASES))
def test_a_value_that_breaks_a_rule_is_refused_before_training(
    overrides: list[str], key: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(ConfigError, match=key) as error:  # the rule itself refuses it, not a later accident
        check(composed("train", overrides))
    assert "\n" not in str(error.value)
    # The command calls the same check first, whatever the rule: every third case through the whole command
    # (Hydra's app composes twice, 0.3-0.6 s a case on 2 cores), all of them through check.
    if RULE_CASES.index((overrides, key)) % 3 == 0:
        assert_refused(*run_in_process("train.py", [*overrides, *hydra_args(tmp_path)], capsys), key)


@pytest.mark.parametrize("key", sorted(CHECKED_WHERE_USED))
def test_keys_checked_where_they_are_used(key: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    override, _ = CHECKED_WHERE_USED[key]
    check(composed("train", [override]))  # no rule can judge these ...
    status, output = run_in_process("train.py", [override, *hydra_args(tmp_path)], capsys)
    assert_refused(status, output, key.rsplit(".", 1)[-1])  # ... using them does (Lightning names its own argument)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("overrides", "key"),
    [*TYPE_CASES[::4], *RULE_CASES[::4], *COMPARE_RULE_CASES],
    ids=lambda case: case if isinstance(case, str) else " ".join(case),
)
def test_compare_refuses_the_same_values(
    overrides: list[str], key: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """scripts/compare.py takes every key train.py takes: a quarter of the catalogue, and its own rules."""
    assert_refused(*run_in_process("scripts/compare.py", [*overrides, *hydra_args(tmp_path)], capsys), key)


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("bad")
    whole = folder / "whole.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(1000)}}, whole)
    truncated = folder / "truncated.ckpt"
    truncated.write_bytes(whole.read_bytes()[:300])
    not_an_image = folder / "digit.png"
    not_an_image.write_text("not a picture")
    (folder / "empty_sweep" / "0").mkdir(parents=True)
    return {"dir": folder, "truncated": truncated, "not_an_image": not_an_image, "sweep": folder / "empty_sweep"}


def script_cases(script: str, schema: type, rules: tuple[Rule, ...]) -> list[tuple[str, list[str], Any]]:
    """A script's bad arguments, each with what its refusal must say: a value of the wrong type for each key (the
    key named as the one that is not right), and each rule's own examples (that rule's own message)."""
    wrong_types = [
        (script, [f"{key}={wrong_value(declared)}"], f"error: {key} is not right")
        for key, declared in typing.get_type_hints(schema).items()
        if wrong_value(declared) is not None
    ]
    broken = [(script, list(example), (schema, rule)) for rule in rules for example in rule.examples]
    return [*wrong_types, *broken]


@pytest.mark.parametrize(
    ("script", "arguments", "expected"),
    [
        *script_cases("scripts/predict.py", PredictConfig, PREDICT_RULES),
        *script_cases("scripts/export.py", ExportConfig, EXPORT_RULES),
    ],
)
def test_scripts_refuse_bad_arguments(
    script: str, arguments: list[str], expected: Any, bad_files: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    with_ckpt = [f"ckpt_path={bad_files['truncated']}", *arguments]
    if not isinstance(expected, str):  # a rule's example: the message that rule gives for these arguments
        schema, rule = expected
        expected = rule.broken(OmegaConf.merge(OmegaConf.structured(schema), OmegaConf.from_cli(with_ckpt)))
        assert isinstance(expected, str), f"{arguments} does not break {rule.key}'s rule"
    status, output = run_in_process(script, with_ckpt, capsys)
    assert status == 1 and "Traceback" not in output and expected in output, output


@pytest.mark.parametrize(
    ("script", "arguments", "message"),
    [
        ("train.py", ["train=false", "ckpt_path={truncated}"], "could not be loaded as an mlptrain checkpoint"),
        ("train.py", ["ckpt_path={dir}"], "is not a file. Give the path of a .ckpt file"),
        ("scripts/predict.py", ["ckpt_path={dir}", "index=0"], "could not be loaded as an mlptrain checkpoint"),
        ("scripts/predict.py", ["ckpt_path={truncated}", "index=0"], "could not be loaded as an mlptrain checkpoint"),
        ("scripts/export.py", ["ckpt_path={truncated}"], "could not be loaded as an mlptrain checkpoint"),
        ("scripts/export.py", ["ckpt_path={dir}", "format=onnx"], "could not be loaded as an mlptrain checkpoint"),
        ("scripts/report.py", ["{sweep}"], "No summary.json below"),
    ],
)
def test_bad_paths_and_files(
    script: str,
    arguments: list[str],
    message: str,
    bad_files: dict[str, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    arguments = [argument.format(**bad_files) for argument in arguments]
    if script == "train.py":
        arguments += hydra_args(tmp_path)
    status, output = run_in_process(script, arguments, capsys)
    assert status == 1 and "Traceback" not in output and message in output, output

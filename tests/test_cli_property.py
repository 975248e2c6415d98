"""Generated bad input: every flag of every subcommand, and the environment defaults.

``cli.parse_or_fail`` is the whole CLI up to the point where a run would start
(flags, environment, paths, the plan), so these run in-process and start nothing.
Whatever the values, the outcome is a Command (the CLI would run it, exit 0) or exit
2 with exactly one line on stderr, nothing on stdout and no traceback.
"""

from __future__ import annotations

import argparse

import pytest
from conftest import own_processes
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llmcluster import cli
from llmcluster.cli_flags import (
    build_bench_parser,
    build_coordinator_parser,
    build_node_parser,
    build_parser,
)

PARSERS = {
    "run": build_parser(),
    "bench": build_bench_parser(),
    "coordinator": build_coordinator_parser(),
    "node": build_node_parser(),
}
ENV_INPUTS = ("MASTER_PORT", "MASTER_ADDR", "NODE_RANK", "NNODES", "LLMCLUSTER_TOKEN")


def _flags(parser: argparse.ArgumentParser, *, valued: bool) -> list[str]:
    return sorted(
        action.option_strings[0]
        for action in parser._actions
        if action.option_strings
        and action.dest not in ("help", "version")
        and (action.nargs is None) == valued
    )


text = st.text(st.characters(blacklist_characters="\x00"), max_size=12)
numbers = st.one_of(
    st.integers(-(10**30), 10**30).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(["inf", "-inf", "nan", "1e400", "-0", "0", "1", "65535", "65536", "99999"]),
)
special = st.sampled_from(
    ["", " ", "auto", "-5", "-5s", "2m30s", "0s", "²", "١٢", "16M", "1T", "x.svg", "/tmp",
     "/nonexistent/x.svg", "kill:rank=3,step=500", "kill:rank=inf,step=2", "nan:step=nan",
     "Vibes-1T", "B200", "ring", "jsonl", "live", "0.0.0.0", "*", "localhost", "s\u00e9cret",
     "a\nb", "\x1b[31m", "--steps", "-n"]
)  # fmt: skip
values = st.one_of(text, numbers, special)


def _environment_safe(value: str) -> bool:
    """What an environment variable can hold: bytes without NUL, read as surrogate escapes."""
    try:
        value.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return False
    return "\x00" not in value


@st.composite
def command_lines(draw: st.DrawFn) -> tuple[list[str], dict[str, str]]:
    name = draw(st.sampled_from(sorted(PARSERS)))
    parser = PARSERS[name]
    argv = [] if name == "run" else [name]
    for flag in draw(st.lists(st.sampled_from(_flags(parser, valued=True)), max_size=4)):
        argv += [flag, draw(values)]
    switches = _flags(parser, valued=False)
    if switches:
        argv += draw(st.lists(st.sampled_from(switches), max_size=2))
    env = draw(st.dictionaries(st.sampled_from(ENV_INPUTS),
                               st.one_of(text, numbers, special).filter(_environment_safe),
                               max_size=3))  # fmt: skip
    return argv, env


SETTINGS = {  # capsys is read (emptied) before every example
    "deadline": None,
    "suppress_health_check": [HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
}


@settings(max_examples=400, **SETTINGS)
@given(command_lines())
def test_any_input_is_a_command_or_one_line_exit_2(
    capsys: pytest.CaptureFixture[str], case: tuple[list[str], dict[str, str]]
) -> None:
    argv, env = case
    with pytest.MonkeyPatch.context() as mp:
        for name in ENV_INPUTS:
            mp.delenv(name, raising=False)
        for name, value in env.items():
            mp.setenv(name, value)
        capsys.readouterr()
        outcome = cli.parse_or_fail(argv)
        out, err = capsys.readouterr()
    if isinstance(outcome, int):
        assert outcome == 2
        assert out == ""
        assert len(err.splitlines()) == 1 and err.endswith("\n"), err
        assert err.startswith("llmcluster: error: ")
    else:
        assert isinstance(outcome, cli.Command)
        assert err == "" and (out == "" or isinstance(outcome, cli.Printed))


@settings(max_examples=60, **SETTINGS)
@given(st.sampled_from(sorted(PARSERS)), values)
def test_a_value_for_every_flag_of_every_subcommand(
    capsys: pytest.CaptureFixture[str], name: str, value: str
) -> None:
    parser = PARSERS[name]
    for flag in _flags(parser, valued=True):
        capsys.readouterr()
        outcome = cli.parse_or_fail(([] if name == "run" else [name]) + [flag, value])
        _, err = capsys.readouterr()
        assert outcome == 2 or isinstance(outcome, cli.Command), (flag, value)
        assert len(err.splitlines()) == (1 if outcome == 2 else 0), (flag, value, err)


def test_parse_starts_nothing() -> None:
    command = cli.parse(["--ranks", "8", "--steps", "2", "--seed", "3"])
    assert isinstance(command, cli.LocalRun)
    assert command.config.ranks == 8 and command.plan.total_steps == 2
    assert own_processes() == []

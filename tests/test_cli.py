"""The CLI: help for every command, one-line errors with exit code 2."""

import subprocess
import sys

import pytest

from posttrain.cli import COMMANDS, main


def test_top_help_lists_commands(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in COMMANDS:
        assert f"  {name}" in out


@pytest.mark.parametrize("name", [n for n, c in COMMANDS.items() if c.config])
def test_command_help_lists_every_key(name, capsys):
    from posttrain.cli import _resolve
    from posttrain.config import describe_fields

    assert main([name, "--help"]) == 0
    out = capsys.readouterr().out
    for key, _, _, _ in describe_fields(_resolve(COMMANDS[name].config)):
        assert f"  {key} " in out


def test_unknown_command_and_key(capsys):
    assert main(["sfft"]) == 2
    assert "unknown command 'sfft' (did you mean 'sft'?)" in capsys.readouterr().err
    assert main(["sft", "lrr=3"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == "error: config: unknown key 'lrr' (did you mean 'lr'?)"


def test_console_script_exit_code_no_traceback():
    r = subprocess.run([sys.executable, "-m", "posttrain.cli", "dpo", "beta=-1"], capture_output=True, text=True)
    assert r.returncode == 2
    assert r.stderr.strip() == "error: config: key 'beta': input should be greater than 0 (got -1)"
    assert "Traceback" not in r.stderr

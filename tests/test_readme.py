"""The README explains every option of both commands once, with the default their --help states."""

from __future__ import annotations

import re
from pathlib import Path

import click
import pytest

from convnext_export.cli import bench_command, export_command

README = Path(__file__).resolve().parents[1] / "README.md"
NO_DEFAULT, FLAG_OFF = "—", "off"
_STATED = re.compile(r"\[default: ([^\]]+)\]|\(default:? ([^)]+)\)")
_CLICK_RANGE = re.compile(r"; [\d.]*<?=?x[<>=\d.]*$")  # click appends "; x>=1" inside its own [default: ...]


def stated_default(command: click.Command, option: click.Option) -> str:
    """The default an option's --help states: its first [default: X] or (default X), 'off' for a plain flag."""
    _, help_text = option.get_help_record(click.Context(command)) or ("", "")
    found = _STATED.search(help_text)
    if found:
        return _CLICK_RANGE.sub("", found[1] or found[2]).strip()
    if option.is_flag and not option.secondary_opts:
        return FLAG_OFF
    return NO_DEFAULT


def readme_options(heading: str) -> dict[str, str]:
    """The README's options table under ``heading``: first flag of each row -> its default column."""
    text = README.read_text()
    start = text.index(f"\n{heading}\n")
    table = []
    for line in text[start + len(heading) + 2:].splitlines():
        if line.startswith("|"):
            table.append(line)
        elif table:
            break
    rows = {}
    for line in table[2:]:  # header, separator
        cells = [cell.strip() for cell in re.split(r"(?<!\\)\|", line.strip("|"))]  # "\|" stays in its cell
        flag = re.match(r"`(-[-\w]+)", cells[0])[1]
        assert flag not in rows, f"{heading}: {flag} is explained twice"
        rows[flag] = cells[1].replace("`", "")
    return rows


def cli_options(command: click.Command) -> dict[str, click.Option]:
    return {max(param.opts, key=len): param for param in command.params
            if isinstance(param, click.Option) and param.name not in ("help", "version")}


@pytest.mark.parametrize("command, heading", [(export_command, "### convnext-export options"),
                                              (bench_command, "### convnext-bench options")])
def test_readme_states_every_option_once_with_the_help_default(command, heading):
    documented, options = readme_options(heading), cli_options(command)
    assert set(documented) == set(options), (f"in --help, not in the README: {sorted(set(options) - set(documented))}; "
                                             f"in the README only: {sorted(set(documented) - set(options))}")
    wrong = {flag: (documented[flag], stated_default(command, option)) for flag, option in options.items()
             if documented[flag] != stated_default(command, option)}
    assert not wrong, f"README default vs --help default: {wrong}"


def test_readme_starts_with_the_two_commands():
    first = [line for line in README.read_text().splitlines()[1:] if line.strip()][:2]
    assert first[0].lstrip().startswith("make run") and first[1].lstrip().startswith("make test")


def test_readme_exit_codes_are_the_clis():
    from convnext_export.options import EXIT_CODES_EPILOG

    text = README.read_text()
    section = text[text.index("\n## Exit codes\n"):]
    documented = set(re.findall(r"^\| (\d+) \|", section, flags=re.M))
    assert documented == set(re.findall(r"^  (\d+) ", EXIT_CODES_EPILOG, flags=re.M))

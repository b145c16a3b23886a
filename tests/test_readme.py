"""The README is a front door that stays true: short, every command in it parses, every config it
names ships, every page it links exists, and no sample in it or in docs/ shows the build machine's
own paths."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cnnkit.cli import _state, app

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]


def commands(text: str) -> list[str]:
    """Each `cnnkit ...` in the text: inline code spans; in code blocks, the lines after a `$ `
    prompt and the lines of bash blocks (a trailing `# comment` dropped), not a sample's output.
    HTML comments are notes for maintainers, not commands."""
    text = re.sub(r"<!--.*?-->", "", text, flags=re.S)
    found, block = [], None  # block: the open code block's language, "" for none given
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            block = line.strip()[3:] if block is None else None
        elif block is not None:
            line = line.strip()
            if line.startswith("$ ") or block in ("bash", "sh", "shell"):
                line = line.removeprefix("$ ")
                if line.startswith("cnnkit "):
                    found.append(re.split(r"\s+#\s", line)[0].strip())
        else:
            found += [span for span in re.findall(r"`([^`]+)`", line) if span.startswith("cnnkit ")]
    return found


def test_the_parser_finds_commands_in_spans_and_blocks():
    text = ("run `cnnkit eval --checkpoint x.pt` or `make train`\n<!-- `cnnkit later --x` -->\n"
            "```bash\ncnnkit runs --sort test   # a comment\nmake test\n```\n"
            "```text\n$ cnnkit models\ncnnkit train: lenet (81,302 params)\n```\n")
    assert commands(text) == ["cnnkit eval --checkpoint x.pt", "cnnkit runs --sort test", "cnnkit models"]


def test_readme_is_short():
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 200, f"README.md has {len(lines)} lines; move detail to docs/"


README_COMMANDS = commands(README.read_text(encoding="utf-8"))


def test_readme_shows_the_commands():
    named = {shlex.split(c)[1] for c in README_COMMANDS}
    assert {"train", "eval", "predict", "runs", "plot", "export", "shapes", "models", "data", "config"} <= named


@pytest.mark.parametrize("command", README_COMMANDS)
def test_each_readme_command_parses(command, monkeypatch):
    """The command, as written, with --help added: its subcommands and options exist (click rejects an
    unknown option or an extra argument before it prints the help)."""
    monkeypatch.setitem(_state, "debug", False)
    args = shlex.split(command)[1:]
    result = CliRunner().invoke(app, [*args, "--help"])
    assert result.exit_code == 0, f"{command!r} does not parse: {result.output}"
    assert "Usage: " in result.output


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_configs_and_pages_named_exist(page):
    text = page.read_text(encoding="utf-8")
    for config in sorted(set(re.findall(r"configs/[\w.-]+\.yaml", text))):
        assert (ROOT / config).is_file(), f"{page.name} names {config}, which does not exist"
    for link in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text):
        if "://" not in link:
            assert (page.parent / link).exists(), f"{page.name} links to {link}, which does not exist"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_no_sample_shows_the_build_machines_paths(page):
    """Samples show paths relative to the checkout or under ~, as cnnkit now prints them."""
    text = page.read_text(encoding="utf-8")
    for prefix in ("/work/", "/root/", "/home/", "/tmp/", "/Users/"):
        assert prefix not in text, f"{page.name} shows {prefix}...: use a relative path or ~"

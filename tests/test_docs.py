"""The docs stay true: the README's quick start runs as written, every relative link resolves, every
``--help`` reads whole at 80 columns, and the repository files say what pyproject says."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import click
import pytest
import yaml
from typer.main import get_command
from typer.testing import CliRunner

from ccup_cli.cli import app

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PAGES = sorted((ROOT / "docs").glob("*.md"))
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")
runner = CliRunner()


def _slug(heading: str) -> str:
    """The anchor MkDocs (Python-Markdown's toc) gives a heading."""
    text = re.sub(r"`|\*\*|\[([^\]]*)\]\([^)]*\)", r"\1", heading).strip()
    text = re.sub(r"[^\w\s-]", "", text).strip().lower()
    return re.sub(r"[-\s]+", "-", text)


def _anchors(page: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", page.read_text(encoding="utf-8"), flags=re.S)
    return {_slug(m.group(1)) for m in re.finditer(r"^#{1,6}\s+(.+?)\s*$", text, flags=re.M)}


def test_readme_is_short():
    assert README.stat().st_size <= 16 * 1024, README.stat().st_size


@pytest.mark.parametrize("page", [README, *PAGES], ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_relative_link_resolves(page):
    text = re.sub(r"```.*?```", "", page.read_text(encoding="utf-8"), flags=re.S)
    targets = [t for t in LINK.findall(text) if not re.match(r"[a-z]+:", t)]
    for target in targets:
        path, _, anchor = target.partition("#")
        resolved = (page.parent / path).resolve() if path else page
        assert resolved.exists(), f"{page.name}: {target} does not exist"
        if anchor and resolved.suffix == ".md":
            assert anchor in _anchors(resolved), f"{page.name}: {target}: no heading makes #{anchor}"


def test_a_broken_link_is_caught():
    """The checker itself can fail: it finds the README's links, and refuses a missing anchor or file."""
    assert len(LINK.findall(README.read_text(encoding="utf-8"))) >= 15
    assert "no-such-heading" not in _anchors(ROOT / "docs" / "search.md")
    assert "search-forgotten-or-avoided" in _anchors(ROOT / "docs" / "search.md")
    assert not (ROOT / "docs" / "no-such-page.md").exists()


def test_every_docs_page_is_in_the_nav():
    nav = yaml.safe_load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"))["nav"]

    def files(entries):
        for entry in entries:
            for value in (entry.values() if isinstance(entry, dict) else [entry]):
                yield from (files(value) if isinstance(value, list) else [value])

    assert sorted(files(nav)) == sorted(p.name for p in PAGES)


def _commands():
    group = get_command(app)
    return [(name, group.commands[name]) for name in sorted(group.commands)]


@pytest.mark.parametrize("name,command", _commands(), ids=[n for n, _ in _commands()])
def test_help_at_80_columns_shows_every_option_whole(name, command):
    result = runner.invoke(app, [name, "--help"], env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert max(len(line) for line in lines) <= 80, [line for line in lines if len(line) > 80]
    for param in command.params:
        if isinstance(param, click.Option):
            for opt in param.opts + param.secondary_opts:
                assert re.search(rf"(?<![\w-]){re.escape(opt)}(?![\w-])", result.output), (name, opt)
    if name not in ("models", "version"):
        assert "Examples:" in result.output and f"ccup {name} " in result.output.split("Examples:")[1]


def test_help_lists_the_datasets_and_says_comma_separated():
    from ccup_cli.data.catalog import DATASET_NAMES

    text = runner.invoke(app, ["eval", "--help"], env={"COLUMNS": "80"}).output
    flat = " ".join(text.split())
    assert all(name in flat for name in DATASET_NAMES)
    assert "--forget TEXT Classes that should be forgotten, comma-separated." in flat
    audit = " ".join(runner.invoke(app, ["audit", "--help"], env={"COLUMNS": "80"}).output.split())
    assert "--eval-split TEXT Split of a named dataset" in audit and "--check" in audit
    unlearn = runner.invoke(app, ["unlearn", "--help"], env={"COLUMNS": "80"}).output
    assert "into the image tower" not in unlearn


def test_repository_files_agree_with_pyproject():
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert project["license"]["text"] == "MIT" and (ROOT / "LICENSE").read_text().startswith("MIT License")
    cff = yaml.safe_load((ROOT / "CITATION.cff").read_text(encoding="utf-8"))
    assert cff["cff-version"] == "1.2.0" and cff["license"] == "MIT" and cff["version"] == project["version"]
    assert "2512.14137" in str(cff["preferred-citation"])
    changelog = (ROOT / "CHANGELOG.md").read_text(encoding="utf-8")
    assert [h for h in re.findall(r"^## (\S+)", changelog, flags=re.M)] == ["Unreleased", "0.3", "0.2", "0.1"]
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    pins = dict(re.findall(r"(torch|torchvision)==([\d.]+)", makefile))
    floors = dict(re.findall(r"^(torch|torchvision)>=([\d.]+)$", "\n".join(project["dependencies"]), flags=re.M))
    for package, floor in floors.items():  # make install's pin lies inside pyproject's range
        assert tuple(map(int, pins[package].split("."))) >= tuple(map(int, floor.split("."))), package
    assert set(floors) == {"torch", "torchvision"}


def _blocks(section: str) -> list[str]:
    """The shell commands of one README section's code blocks, continuation lines joined."""
    text = README.read_text(encoding="utf-8")
    body = text.split(f"## {section}\n", 1)[1].split("\n## ", 1)[0]
    commands = []
    for block in re.findall(r"```\n(.*?)```", body, flags=re.S):
        joined = block.replace("\\\n", " ")
        commands += [line.split("  #")[0].strip() for line in joined.splitlines() if line.strip()]
    return commands


def _run(command: str, cwd: Path, monkeypatch) -> tuple[int, str]:
    """One README command as written: `python scripts/...` as a process, `ccup ...` in this process."""
    argv = shlex.split(command)
    if argv[0] == "python":  # the clone's scripts/, from wherever the test runs
        done = subprocess.run([sys.executable, str(ROOT / argv[1]), *argv[2:]], cwd=cwd, capture_output=True,
                              text=True, timeout=120)
        return done.returncode, done.stdout + done.stderr
    assert argv[0] == "ccup", command
    monkeypatch.chdir(cwd)
    result = runner.invoke(app, argv[1:], env={"COLUMNS": "100"})
    return result.exit_code, result.output


@pytest.mark.embedded
def test_the_quick_start_and_the_ci_gate_run_as_written(tmp_path, monkeypatch):
    """Every command of the README's quick start and CI gate, in order, in one folder: the unlearning
    at --alpha auto lands the class at chance, so `ccup audit --check` exits 0 (every verdict GONE)."""
    commands = _blocks("Quick start: the real job") + _blocks("The CI gate")
    assert [c.split()[1] for c in commands] == ["scripts/make_quickstart.py", "unlearn", "audit", "audit", "eval"]
    outputs = []
    for command in commands:
        code, output = _run(command, tmp_path, monkeypatch)
        assert code == 0, (command, output[-3000:])
        outputs.append(output)
    assert "ccup / 0.78 (auto)" in outputs[1]
    assert "check passed: every verdict measured is GONE" in outputs[2]
    assert "GONE for text search (at chance at every depth" in outputs[2]
    assert "every threshold held" in outputs[4] and 'text search for "sandal" GONE' in outputs[4]

"""README.md and docs/: a short front page, every linked page there, and every
command, make target and `--set` key the pages name still real."""

from __future__ import annotations

import re

import pytest

from shopseg.cli import build_parser
from shopseg.config import ConfigError, load_config

from .conftest import REPO

PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
FRONT_PAGE_LINES = 250


def _text(path) -> str:
    return path.read_text(encoding="utf-8")


def _code(text: str) -> str:
    """What a reader copies: fenced blocks and inline code."""
    fenced = re.findall(r"```[^\n]*\n(.*?)```", text, flags=re.S)
    inline = re.findall(r"`([^`\n]+)`", re.sub(r"```.*?```", "", text, flags=re.S))
    return "\n".join(fenced + inline)


def test_the_front_page_is_short_and_links_every_docs_page():
    readme = _text(REPO / "README.md")
    assert len(readme.splitlines()) <= FRONT_PAGE_LINES
    linked = set(re.findall(r"\]\(docs/([\w\-]+\.md)", readme))
    pages = {p.name for p in (REPO / "docs").glob("*.md")}
    assert pages <= linked, f"docs pages the front page does not link: {sorted(pages - linked)}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_relative_link_of_a_page_resolves(page):
    text = _text(page)
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if target.startswith(("http://", "https://", "mailto:")):
            continue
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        assert file.exists(), f"{page.name}: link to missing {target}"
        if anchor and file.suffix == ".md":
            slugs = {
                re.sub(r"[^\w\- ]", "", line.lstrip("#").strip().lower()).replace(" ", "-")
                for line in _text(file).splitlines()
                if line.startswith("#")
            }
            assert anchor in slugs, f"{page.name}: no heading #{anchor} in {file.name}"


def test_every_shopseg_command_the_pages_show_exists():
    parser = build_parser()
    commands = set(parser._subparsers._group_actions[0].choices)  # noqa: SLF001
    shown = set()
    for page in PAGES:
        shown |= set(re.findall(r"(?:^|[\s/])shopseg ([a-z][a-z_\-]+)", _code(_text(page)), re.M))
    assert {"run", "summary", "stream", "cluster", "config-schema", "segment"} <= shown
    assert shown <= commands, f"commands the docs show but the CLI lacks: {shown - commands}"


def test_every_make_target_the_pages_name_is_in_the_makefile():
    makefile = _text(REPO / "Makefile")
    targets = set(re.findall(r"^([a-z][\w\-]*):", makefile, re.M))
    named = set()
    for page in PAGES:
        named |= set(re.findall(r"\bmake ([a-z][\w\-]*)", _code(_text(page))))
    assert {"run", "test", "bench"} <= named
    assert named <= targets, f"make targets the docs name but the Makefile lacks: {named - targets}"


def test_every_set_key_the_pages_show_is_a_configuration_key():
    keys = set()
    for page in PAGES:
        keys |= set(re.findall(r"--set ['\"]?([a-z_]+(?:\.[a-z_0-9]+)+)=", _text(page)))
    assert "generate.users" in keys
    unknown = []
    for key in sorted(keys):
        try:
            load_config(REPO / "conf" / "local.yaml", [f"{key}=null"])
        except ConfigError as exc:
            # A key the config knows but refuses null for is a key all the same.
            if "unknown" in str(exc).lower() or "extra" in str(exc).lower():
                unknown.append(key)
    assert not unknown, f"--set keys the docs show that no config has: {unknown}"

"""Every reference in the code to the method notes can be followed from inside the repository.

* every `docs/<path>.md` (with its `#anchor`, if given) cited in src/, conf/, tests/, benchmarks/, experiments/,
  run.py, README.md or the Makefile names a file that exists and, with an anchor, a heading of that file;
* every relative link between the notes under docs/ resolves the same way;
* nothing cites the notes that used to live beside the project (the method-spec and design markdown files, the paper
  text extracts by file name): they are not in a clone.

Anchors are GitHub's: the heading lower-cased, punctuation other than `-` and `_` dropped, spaces made `-`, and a
`-1`, `-2`, ... suffix on repeated headings.
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
SCANNED = ["src", "conf", "tests", "benchmarks", "experiments", "run.py", "README.md", "Makefile"]
SUFFIXES = {".py", ".yaml", ".yml", ".md", ".sh", ".toml", ".txt", ""}

DOC_REFERENCE = re.compile(r"docs/[\w./-]+?\.md(?:#[\w-]+)?")
MARKDOWN_LINK = re.compile(r"\]\(([^)\s]+)\)")
# the outside notes, written so that this file does not match itself
OUTSIDE = re.compile(r"(?:METHODS|DESIGN)[.]md|(?i:seed ?0[0-9]{2}|seeds[/])")


def scanned_files() -> list[Path]:
    files = []
    for entry in SCANNED:
        path = ROOT / entry
        if path.is_file():
            files.append(path)
        elif path.is_dir():
            files += [p for p in sorted(path.rglob("*")) if p.is_file() and p.suffix in SUFFIXES
                      and "__pycache__" not in p.parts]
    return files


def slug(heading: str) -> str:
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(markdown: Path) -> set[str]:
    found: set[str] = set()
    seen: dict[str, int] = {}
    in_code = False
    for line in markdown.read_text(encoding="utf-8").splitlines():
        if line.lstrip().startswith("```"):
            in_code = not in_code
            continue
        match = re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
        if in_code or not match:
            continue
        base = slug(match.group(1))
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return found


def unresolved(target: Path, anchor: str | None) -> str | None:
    """Why a reference to `target#anchor` cannot be followed, or None."""
    if not target.is_file():
        return f"{target.relative_to(ROOT) if target.is_relative_to(ROOT) else target} does not exist"
    if anchor and anchor not in anchors(target):
        return f"{target.relative_to(ROOT)} has no heading with anchor #{anchor}"
    return None


def test_docs_folder_has_the_notes():
    for stem in ("README", "design", "methods/sparsity", "methods/lora", "methods/wtacrs", "methods/stability",
                 "methods/generation"):
        assert (DOCS / stem).with_suffix(".md").is_file(), f"docs/{stem} (markdown) is missing"


def test_slug_follows_github():
    assert slug("DSEE phases") == "dsee-phases"
    assert slug("R3F and R4F") == "r3f-and-r4f"
    assert slug("CHILD-TUNING_D") == "child-tuning_d"
    assert slug("The N:M pattern") == "the-nm-pattern"


def test_code_references_to_docs_resolve():
    problems, count = [], 0
    for path in scanned_files():
        text = path.read_text(encoding="utf-8", errors="replace")
        for match in DOC_REFERENCE.finditer(text):
            count += 1
            file, _, anchor = match.group(0).partition("#")
            why = unresolved(ROOT / file, anchor or None)
            if why:
                line = text.count("\n", 0, match.start()) + 1
                problems.append(f"{path.relative_to(ROOT)}:{line}: {match.group(0)}: {why}")
    assert not problems, "\n".join(problems)
    assert count > 0, "no reference to docs/ found: the scan itself is broken"


def test_links_inside_docs_resolve():
    problems = []
    for page in sorted(DOCS.rglob("*.md")):
        text = page.read_text(encoding="utf-8")
        for match in MARKDOWN_LINK.finditer(text):
            link = match.group(1)
            if re.match(r"[a-z]+:", link):  # http(s), mailto: not checked offline
                continue
            file, _, anchor = link.partition("#")
            why = unresolved((page.parent / file).resolve() if file else page, anchor or None)
            if why:
                line = text.count("\n", 0, match.start()) + 1
                problems.append(f"{page.relative_to(ROOT)}:{line}: ({link}): {why}")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("area", ["code", "docs"])
def test_no_reference_to_notes_outside_the_repository(area):
    files = scanned_files() if area == "code" else sorted(DOCS.rglob("*.md"))
    problems = []
    for path in files:
        for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            if OUTSIDE.search(line):
                problems.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()[:120]}")
    assert not problems, "cite docs/ or the paper by title instead:\n" + "\n".join(problems)

"""Every "design.md section N" / "style.md" citation in the repository resolves (docs/design.md).

Docstrings, comments, the notebook and the Markdown pages cite the design notes instead of
restating them. This test finds every citation and checks that the cited page exists under
docs/, that each cited section number is a "## N. Title" heading of that page, that a quoted
subsection title ("design.md section 1, \"XLA:CPU pitfalls\"") is part of a heading inside that
section, and that a ``term`` in double backticks after the number occurs in that section's text.

Citation forms recognised (whitespace, line breaks and ``#`` comment markers may separate the
words, so wrapped citations are found too):

- ``design.md section 1``, ``design.md section 1.7`` (a subsection), ``design.md sections 0 and 5``, ``design.md sections 2-4``,
  ``design.md sections 2, 3 and 4``, ``design.md s. 3``, ``design.md s. 2, 4``,
  ``design.md §1``, ``design.md §2 and §4``, ``design.md 6``;
- any of those followed by ``, "Title"`` (a heading in that section) or ``, ``term```` (text in
  that section);
- a bare ``design.md`` or ``style.md`` (the page must exist).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = os.path.join(REPO, "docs")
PAGES = ("design.md", "style.md")

# Python sources and Markdown pages are scanned where they live; the notebook by its cells.
PY_DIRS = ("fairjax", "bench", "tests", "configs")
MD_DIRS = (".", "docs", "bench", "notebooks")
NOTEBOOK_DIRS = ("notebooks",)

_GAP = r"[\s#]*"  # words of a citation may be split by spaces, line breaks and comment markers
_NUM = r"\d+(?:\.\d+)?"  # a section ("1") or a subsection ("1.7")
_NUMS = rf"{_NUM}(?:{_GAP}(?:-|–|,|and|&){_GAP}(?:§{_GAP})?{_NUM})*"
CITATION = re.compile(
  rf"\b(?P<page>design|style)\.md"
  rf"(?:{_GAP}(?:sections?\b|s\.|§)?{_GAP}(?P<nums>{_NUMS})(?![\d.]\d)"
  rf"(?:{_GAP},{_GAP}(?:\"(?P<title>[A-Za-z`][^\"]{{0,80}})\"|``(?P<term>[^`]{{1,40}})``))?)?"
)
HEADING = re.compile(r"^(?P<level>#{1,6})\s+(?P<text>.*?)\s*$")
SECTION = re.compile(r"^(?P<num>\d+)\.\s+\S")


@dataclasses.dataclass(frozen=True)
class Citation:
  where: str  # "path:line" (or "path cell k, line l" for the notebook)
  page: str  # "design.md" or "style.md"
  sections: tuple[int, ...]
  subsections: tuple[str, ...]  # "1.7" for "design.md section 1.7" (its section is in sections)
  title: str | None
  term: str | None
  text: str


@dataclasses.dataclass
class Section:
  title: str
  headings: list[str]  # the section's own heading and those of its subsections
  body: str


def _normalise(text: str) -> str:
  """One line: line breaks with their indentation and comment markers become one space."""
  return re.sub(r"\s*\n[\s#]*", " ", text).strip()


def _numbers(text: str) -> tuple[tuple[int, ...], tuple[str, ...]]:
  """``("2-4")`` -> sections (2, 3, 4); ``"1.7"`` -> section 1 and subsection "1.7"."""
  sections: list[int] = []
  subsections: list[str] = []
  for first, last in re.findall(r"(\d+(?:\.\d+)?)(?:\s*[-–]\s*(\d+)\b(?!\.))?", text):
    if "." in first:
      sections.append(int(first.split(".")[0]))
      subsections.append(first)
    else:
      sections.extend(range(int(first), int(last or first) + 1))
  return tuple(dict.fromkeys(sections)), tuple(subsections)


def find_citations(text: str, where: str) -> list[Citation]:
  """Every citation of design.md / style.md in ``text``; ``where`` prefixes the line numbers."""
  found = []
  for m in CITATION.finditer(text):
    line = text.count("\n", 0, m.start()) + 1
    sections, subsections = _numbers(m["nums"]) if m["nums"] else ((), ())
    found.append(
      Citation(
        where=f"{where}:{line}",
        page=f"{m['page']}.md",
        sections=sections,
        subsections=subsections,
        title=_normalise(m["title"]) if m["title"] else None,
        term=m["term"],
        text=_normalise(m.group(0)),
      )
    )
  return found


def parse_sections(markdown: str) -> dict[int, Section]:
  """``{N: Section}`` for every ``## N. Title`` heading (headings inside code fences ignored)."""
  sections: dict[int, Section] = {}
  current: Section | None = None
  in_fence = False
  for line in markdown.splitlines():
    if line.lstrip().startswith("```"):
      in_fence = not in_fence
    heading = None if in_fence else HEADING.match(line)
    if heading and len(heading["level"]) == 2:
      number = SECTION.match(heading["text"])
      current = None
      if number:
        n = int(number["num"])
        assert n not in sections, f"section {n} appears twice"
        current = sections[n] = Section(heading["text"], [heading["text"]], "")
      continue
    if current is None:
      continue
    if heading and len(heading["level"]) > 2:
      current.headings.append(heading["text"])
    current.body += line + "\n"
  return sections


def check(citation: Citation, pages: dict[str, dict[int, Section] | None]) -> list[str]:
  """Why ``citation`` does not resolve (empty when it does)."""
  where = f"{citation.where}: {citation.text!r}"
  sections = pages.get(citation.page)
  if sections is None:
    return [f"{where}: docs/{citation.page} does not exist"]
  errors = []
  for n in citation.sections:
    section = sections.get(n)
    if section is None:
      errors.append(f"{where}: docs/{citation.page} has no section {n} (it has {sorted(sections)})")
      continue
    if citation.title and not any(citation.title.lower() in h.lower() for h in section.headings):
      errors.append(
        f"{where}: no heading of docs/{citation.page} section {n} contains "
        f"{citation.title!r} (headings: {section.headings})"
      )
    for sub in citation.subsections:
      if sub.split(".")[0] == str(n) and not any(
        re.match(rf"{re.escape(sub)}\.?\s", h + " ") for h in section.headings[1:]
      ):
        errors.append(f"{where}: docs/{citation.page} section {n} has no subsection {sub}")
    if citation.term and not re.search(rf"(?<!\w){re.escape(citation.term)}(?!\w)", section.body):
      errors.append(
        f"{where}: {citation.term!r} does not occur in docs/{citation.page} section {n}"
      )
  return errors


def _sources() -> list[tuple[str, str]]:
  """``(where, text)`` of every scanned file (notebook cells one by one)."""
  out = []

  def add(path: str, text: str) -> None:
    out.append((os.path.relpath(path, REPO), text))

  for top in PY_DIRS:
    for root, dirs, files in os.walk(os.path.join(REPO, top)):
      dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d != "__pycache__")
      for name in sorted(files):
        if name.endswith(".py"):
          path = os.path.join(root, name)
          with open(path, encoding="utf-8") as f:
            add(path, f.read())
  for top in MD_DIRS:
    for root, dirs, files in os.walk(os.path.join(REPO, top)):
      if top == ".":
        dirs[:] = []  # the top-level pages only; the folders are listed in MD_DIRS
      dirs[:] = sorted(d for d in dirs if not d.startswith("."))
      for name in sorted(files):
        if name.endswith(".md"):
          path = os.path.join(root, name)
          with open(path, encoding="utf-8") as f:
            add(path, f.read())
  for top in NOTEBOOK_DIRS:
    folder = os.path.join(REPO, top)
    for name in sorted(os.listdir(folder)):
      if name.endswith(".ipynb"):
        path = os.path.join(folder, name)
        with open(path, encoding="utf-8") as f:
          cells = json.load(f)["cells"]
        for k, cell in enumerate(cells):
          source = cell.get("source", "")
          add(path + f" cell {k}, line", "".join(source) if isinstance(source, list) else source)
  return out


def _pages() -> dict[str, dict[int, Section] | None]:
  pages: dict[str, dict[int, Section] | None] = {}
  for page in PAGES:
    path = os.path.join(DOCS, page)
    if os.path.isfile(path):
      with open(path, encoding="utf-8") as f:
        pages[page] = parse_sections(f.read())
    else:
      pages[page] = None
  return pages


def all_citations() -> list[Citation]:
  return [c for where, text in _sources() for c in find_citations(text, where)]


@pytest.mark.parametrize("page", PAGES)
def test_cited_pages_exist(page):
  assert os.path.isfile(os.path.join(DOCS, page)), f"docs/{page} is cited but missing"


def test_design_sections_are_numbered_from_zero():
  sections = _pages()["design.md"]
  assert sections, "docs/design.md has no '## N. Title' sections"
  assert sorted(sections) == list(range(len(sections))), sorted(sections)


def test_every_citation_resolves():
  citations = all_citations()
  # The repository cites the notes from dozens of places; finding almost none means the scan or
  # the pattern broke, not that the citations went away.
  assert len(citations) > 50, len(citations)
  assert any(c.title for c in citations) and any(c.page == "style.md" for c in citations)
  pages = _pages()
  errors = [e for c in citations for e in check(c, pages)]
  assert not errors, "unresolved design-note citations:\n" + "\n".join(errors)


# The fixtures below build their citations from pieces so that this file itself holds no
# citation of a missing section (it is scanned like every other test).
_D = "design" + ".md"


@pytest.mark.parametrize(
  "text, sections, title, term",
  [
    (f"({_D} section 1)", (1,), None, None),
    (f"({_D} sections 0 and 5)", (0, 5), None, None),
    (f"({_D} sections 2-4)", (2, 3, 4), None, None),
    (f"({_D} sections 2, 3 and 4)", (2, 3, 4), None, None),
    (f"({_D} s. 3)", (3,), None, None),
    (f"({_D} s. 2, 4)", (2, 4), None, None),
    (f"({_D} §1)", (1,), None, None),
    (f"({_D} §2 and §4)", (2, 4), None, None),
    (f"({_D} 6)", (6,), None, None),
    (f"({_D} section 1.7)", (1,), None, None),
    (f"({_D} §1.3 and §4)", (1, 4), None, None),
    (f"({_D}, the paper's formula)", (), None, None),
    (f'"{_D} §N" refers to', (), None, None),
    (f'({_D} section 2, "Scope")', (2,), "Scope", None),
    (f'({_D} section 5, "undefined" rates)', (5,), "undefined", None),
    (f"({_D} section 4, ``r_i``)", (4,), None, "r_i"),
    (f"({_D} section 3, last point)", (3,), None, None),
    # Wrapped over lines, in a docstring and in a comment.
    (f"slow on XLA:CPU ({_D}\n    section 1).", (1,), None, None),
    (f'slow ({_D} section 1, "XLA:CPU\n    pitfalls").', (1,), "XLA:CPU pitfalls", None),
    (f'  # slow ({_D} section 1, "XLA:CPU\n  # pitfalls").', (1,), "XLA:CPU pitfalls", None),
    (f"  # see {_D}\n  # sections 2\n  # and 4.", (2, 4), None, None),
  ],
)
def test_citation_forms(text, sections, title, term):
  (citation,) = find_citations(text, "x")
  assert (citation.page, citation.sections, citation.title, citation.term) == (
    "design.md",
    sections,
    title,
    term,
  )


def test_style_citation_is_found():
  (citation,) = find_citations("Shaped like the flax examples' train.py (style" + ".md): a", "x")
  assert citation.page == "style.md" and citation.sections == ()


_FAKE = """# notes

## 0. Architecture
text about fairgrape_keep_per_iter (whole-word terms only: nothing else here)
## 1. Curvature
### 1.1 XLA:CPU pitfalls
```
## 7. not a heading (inside a code fence)
```
loops are slow; r_i lives here
"""


@pytest.mark.parametrize(
  "text, problem",
  [
    (f"({_D} section 7)", "has no section 7"),
    (f"({_D} sections 0-2)", "has no section 2"),
    (f'({_D} section 0, "XLA:CPU pitfalls")', "no heading"),  # title under another section
    (f'({_D} section 1, "Scope")', "no heading"),
    (f"({_D} section 0, ``r_i``)", "does not occur"),
    (f"({_D} section 0, ``keep``)", "does not occur"),  # whole words only
    (f"({_D} section 1.2)", "has no subsection 1.2"),
    ("(style" + ".md)", "does not exist"),
  ],
)
def test_broken_citations_are_reported(text, problem):
  pages = {"design.md": parse_sections(_FAKE), "style.md": None}
  (citation,) = find_citations(text, "x")
  errors = check(citation, pages)
  assert errors and problem in errors[0], errors


def test_good_citations_pass_on_the_fake_page():
  pages = {"design.md": parse_sections(_FAKE)}
  for text in (
    f'({_D} section 1, "XLA:CPU\n  # pitfalls")',
    f"({_D} sections 0-1)",
    f"({_D} section 1.1)",
    f"({_D} section 1, ``r_i``)",
    f"({_D})",
  ):
    (citation,) = find_citations(text, "x")
    assert check(citation, pages) == [], text

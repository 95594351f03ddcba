"""Runs the examples of docs/api.md so the API reference cannot rot.

Every ```python block runs, top to bottom, in one namespace (later blocks use names of earlier
ones), in a temporary working directory. A block directly preceded by
``<!-- docs-test: skip (reason) -->`` needs downloaded data: it is compiled, its imports are
executed, and every ``module.attribute`` it uses on an imported module must exist. Every public
function and class of the kernel modules must be named in the page.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib
import inspect
import os
import re
import traceback
import types

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
API_MD = os.path.join(REPO, "docs", "api.md")
SKIP = re.compile(r"<!--\s*docs-test:\s*skip\s*\((?P<reason>[^()]*\S[^()]*)\)\s*-->")
FENCE = re.compile(r"^```(?P<lang>\S*)\s*$")
LANGS = {"python", "bash", "text"}

# Modules whose whole public API must be documented (design.md section 0: the kernels and the
# methods a researcher imports). A public name is one defined in the module without a leading _.
DOCUMENTED_MODULES = (
  "fairjax.bootstrap",
  "fairjax.curvature",
  "fairjax.masks",
  "fairjax.metrics",
  "fairjax.snnl",
  "fairjax.slimming",
  "fairjax.pruning.fairprune",
  "fairjax.pruning.fairgrape",
  "fairjax.pruning.baselines",
  "fairjax.data.pipeline",
  "fairjax.data.synthetic",
  "fairjax.models.pretrained",
  "fairjax.pruning.api",
  "fairjax.schedules",
  "fairjax.stopping",
  "fairjax.nnx_adapter",
)
# Public names documented elsewhere or internal by nature (say why).
NOT_DOCUMENTED = {
  "fairjax.curvature.LayerSpec": "returned by discover_layers; fields in its docstring",
  "fairjax.data.pipeline.Source": "the record protocol, described in prose",
  "fairjax.slimming.as_slim_model": "used by slim_sequential_cnn; docstring",
  "fairjax.slimming.SlimSequentialCNN": "returned by slim_sequential_cnn",
}


@dataclasses.dataclass
class Block:
  lang: str
  line: int  # 1-based line of the first code line in api.md
  source: str
  skip_reason: str | None


def parse_blocks(text: str) -> list[Block]:
  """Fenced blocks of ``text`` with the skip marker that directly precedes each (if any)."""
  lines = text.splitlines()
  blocks: list[Block] = []
  pending: tuple[str, int] | None = None
  i = 0
  while i < len(lines):
    stripped = lines[i].strip()
    if stripped.startswith("<!--") and "docs-test" in stripped:
      match = SKIP.fullmatch(stripped)
      assert match, f"api.md:{i + 1}: malformed marker; write <!-- docs-test: skip (reason) -->"
      pending = (match["reason"].strip(), i + 1)
    elif (fence := FENCE.match(lines[i])) is not None:
      end = next((j for j in range(i + 1, len(lines)) if lines[j].startswith("```")), None)
      assert end is not None, f"api.md:{i + 1}: unclosed code fence"
      lang = fence["lang"]
      assert lang in LANGS, f"api.md:{i + 1}: code fence language {lang!r} not in {sorted(LANGS)}"
      reason = None
      if pending is not None:
        assert lang == "python", f"api.md:{pending[1]}: skip marker before a {lang!r} block"
        reason = pending[0]
        pending = None
      blocks.append(Block(lang, i + 2, "\n".join(lines[i + 1 : end]), reason))
      i = end
    elif stripped and pending is not None:
      raise AssertionError(f"api.md:{pending[1]}: skip marker not directly followed by a block")
    i += 1
  assert pending is None, f"api.md:{pending[1]}: skip marker at the end of the file"
  return blocks


def _compile(block: Block) -> types.CodeType:
  # Leading newlines make traceback line numbers those of api.md.
  return compile("\n" * (block.line - 1) + block.source, API_MD, "exec")


@pytest.fixture(scope="module")
def blocks() -> list[Block]:
  with open(API_MD, encoding="utf-8") as f:
    return parse_blocks(f.read())


def test_parser_finds_markers_and_rejects_stray_ones():
  text = "x\n<!-- docs-test: skip (needs data) -->\n\n```python\na = 1\n```\n```bash\nls\n```\n"
  parsed = parse_blocks(text)
  assert [(b.lang, b.line, b.source, b.skip_reason) for b in parsed] == [
    ("python", 5, "a = 1", "needs data"),
    ("bash", 8, "ls", None),
  ]
  with pytest.raises(AssertionError, match="not directly followed"):
    parse_blocks("<!-- docs-test: skip (why) -->\ntext\n```python\na = 1\n```\n")
  with pytest.raises(AssertionError, match="malformed marker"):
    parse_blocks("<!-- docs-test: skip -->\n```python\na = 1\n```\n")
  with pytest.raises(AssertionError, match="skip marker before a 'bash' block"):
    parse_blocks("<!-- docs-test: skip (why) -->\n```bash\nls\n```\n")


def test_every_python_block_compiles(blocks):
  python = [b for b in blocks if b.lang == "python"]
  assert len(python) >= 20 and sum(b.skip_reason is None for b in python) >= 18
  for block in python:
    _compile(block)  # SyntaxError names api.md and the line


def test_skipped_blocks_import_and_name_real_attributes(blocks):
  skipped = [b for b in blocks if b.lang == "python" and b.skip_reason]
  assert skipped, "expected the real-data examples to be marked as not run"
  for block in skipped:
    tree = ast.parse(block.source)
    namespace: dict = {}
    imports = [node for node in tree.body if isinstance(node, (ast.Import, ast.ImportFrom))]
    exec(compile(ast.Module(body=imports, type_ignores=[]), API_MD, "exec"), namespace)
    for node in ast.walk(tree):
      if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
        module = namespace.get(node.value.id)
        if isinstance(module, types.ModuleType):
          assert hasattr(module, node.attr), (
            f"api.md:{block.line - 1 + node.lineno}: {node.value.id}.{node.attr} does not exist"
          )


def test_examples_run(blocks, tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)  # examples write files relative to the working directory
  namespace: dict = {"__name__": "api_md"}
  ran = 0
  for block in blocks:
    if block.lang != "python" or block.skip_reason:
      continue
    try:
      exec(_compile(block), namespace)
    except Exception:
      pytest.fail(
        f"the example at docs/api.md:{block.line} failed:\n{traceback.format_exc()}", pytrace=False
      )
    ran += 1
  assert ran >= 18


def _public_names(module: types.ModuleType) -> list[str]:
  names = getattr(module, "__all__", None)
  if names is None:
    names = [
      n
      for n, obj in vars(module).items()
      if not n.startswith("_")
      and (inspect.isfunction(obj) or inspect.isclass(obj))
      and getattr(obj, "__module__", None) == module.__name__
    ]
  return sorted(n for n in names if callable(getattr(module, n)))


@pytest.mark.parametrize("module_name", DOCUMENTED_MODULES)
def test_public_api_is_documented(module_name):
  with open(API_MD, encoding="utf-8") as f:
    text = f.read()
  module = importlib.import_module(module_name)
  missing = [
    n
    for n in _public_names(module)
    if f"{module_name}.{n}" not in NOT_DOCUMENTED and not re.search(rf"\b{re.escape(n)}\b", text)
  ]
  assert not missing, f"{module_name}: public {missing} not in docs/api.md; document them there"

"""Every ```python and ```bash block of README.md and docs/*.md runs (docs/development.md#docs-test).

Per Markdown file, in one child process and one temporary working directory: python blocks in
order in one namespace, bash blocks with `biomed-jax` on PATH. Hub ids resolve offline to tiny
seeded checkpoints in a hub cache built here (`_tiny_models.offline_hub`). A block preceded
directly by `<!-- docs-test: skip (reason) -->` is not run.
"""

from __future__ import annotations

import ast
import dataclasses
import json
import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from _tiny_models import offline_hub

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
RUN = ("python", "bash")
FENCE = re.compile(r"^(`{3,})\s*([\w+-]*)")
SKIP = re.compile(r"^<!-- docs-test: skip \((.+)\) -->$")


@dataclasses.dataclass(frozen=True)
class Block:
    kind: str  # the fence's language
    code: str
    line: int  # of the first code line (1-based)
    skip: str | None  # the reason, when marked


def blocks(text: str, name: str = "<md>") -> list[Block]:
    """The fenced blocks of a Markdown text, with their skip markers."""
    lines, out, i = text.splitlines(), [], 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            below = lines[i + 1] if i + 1 < len(lines) else ""
            if SKIP.match(lines[i].strip()) and not FENCE.match(below):
                raise ValueError(f"{name}:{i + 1}: a skip marker must sit directly above a fence")
            i += 1
            continue
        ticks, kind, start = m.group(1), m.group(2), i + 1
        end = next((j for j in range(start, len(lines)) if lines[j].strip() == ticks), None)
        if end is None:
            raise ValueError(f"{name}:{i + 1}: unclosed ``` fence")
        above = SKIP.match(lines[i - 1].strip()) if i else None
        code = "\n".join(lines[start:end]) + "\n"
        out.append(Block(kind, code, start + 1, above.group(1) if above else None))
        i = end + 1
    return out


def test_block_parser():
    text = (
        "# t\n```python\nx = 1\n```\n<!-- docs-test: skip (needs a TPU) -->\n```bash\nrm -rf /\n"
        "```\n````md\n```python\nnot = a block\n```\n````\n```json\n{}\n```\n"
    )
    got = blocks(text)
    assert [(b.kind, b.line, b.skip) for b in got] == [
        ("python", 3, None),
        ("bash", 7, "needs a TPU"),
        ("md", 10, None),
        ("json", 15, None),
    ]
    assert got[0].code == "x = 1\n" and got[2].code == "```python\nnot = a block\n```\n"
    with pytest.raises(ValueError, match=r"<md>:1: unclosed"):
        blocks("```python\nx = 1\n")
    with pytest.raises(ValueError, match=r"<md>:4: a skip marker must sit directly above"):
        blocks("```bash\nrm -rf /\n```\n<!-- docs-test: skip (below, not above) -->\n")


@pytest.fixture(scope="session")
def docs_env(tmp_path_factory) -> dict[str, str]:
    """The hub cache of tiny models, our caches, and `biomed-jax` (this tree's) on PATH."""
    root = tmp_path_factory.mktemp("docs_hub")
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # the reader's one device
    env |= offline_hub(root)
    bin_dir = root / "bin"
    bin_dir.mkdir()
    cli = bin_dir / "biomed-jax"
    cli.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m biomed_jax.cli "$@"\n')
    cli.chmod(cli.stat().st_mode | stat.S_IEXEC)
    # this tree's CLI first, then this interpreter's environment (`python`, `pip`)
    env["PATH"] = os.pathsep.join([str(bin_dir), str(Path(sys.executable).parent), env["PATH"]])
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


def runnable_blocks(doc: Path) -> list[dict]:
    """The blocks of `doc` the test runs, as the runner takes them."""
    name = str(doc.relative_to(REPO))
    return [
        {"kind": b.kind, "code": b.code, "file": str(doc), "line": b.line}
        for b in blocks(doc.read_text(encoding="utf-8"), name)
        if b.kind in RUN and b.skip is None
    ]


RUNNABLE = {doc: runnable_blocks(doc) for doc in DOCS}


def test_only_the_pages_of_commands_have_nothing_to_run():
    # Their blocks run the test suite and full-size benchmarks; each says why it is not run here.
    idle = {str(doc.relative_to(REPO)) for doc, runnable in RUNNABLE.items() if not runnable}
    assert idle == {"docs/development.md", "docs/performance.md"}


@pytest.mark.slow  # 10-60 s per file on a quiet 2-core CPU (a JAX process, CLI calls, compiles)
@pytest.mark.parametrize(
    "doc",
    [doc for doc, runnable in RUNNABLE.items() if runnable],
    ids=lambda p: str(p.relative_to(REPO)),
)
def test_code_blocks_run(doc, docs_env, tmp_path):
    name = str(doc.relative_to(REPO))
    runnable = RUNNABLE[doc]
    plan = tmp_path / "blocks.json"
    plan.write_text(json.dumps(runnable))
    work = tmp_path / "work"
    work.mkdir()
    done = subprocess.run(
        [sys.executable, str(REPO / "tests" / "_docs_runner.py"), str(plan)],
        cwd=work,
        env=docs_env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, f"{name}:\n{done.stdout[-4000:]}\n{done.stderr[-6000:]}"


# The texts the docs give the tiny models: string arguments of these calls (or of the names they
# were assigned to), and the quoted text of `biomed-jax generate|fill-mask|attention` and of a
# `printf '...' > docs.txt`. The fairseq and task pages bring models with their own vocabularies.
TEXT_CALLS = {"attention", "embed", "encode_for_ner", "fill_mask", "generate_text", "tok"}
TEXT_CALLS |= {"tokenize", "tokenizer"}
FIRST_ARGUMENT_ONLY = {"createDataFrame"}  # (rows, schema)
CLI_TEXT = re.compile(r'biomed-jax (?:generate|fill-mask|attention) "([^"]+)"')
PRINTF_LINES = re.compile(r"printf '([^'{]*)' > \S+\.txt")
OWN_VOCABULARY = {"docs/biogpt-fairseq.md", "docs/biogpt-tasks.md"}


def _strings(node: ast.AST, names: dict[str, list[str]]) -> list[str]:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value] if node.value else []
    if isinstance(node, (ast.List, ast.Tuple)):
        return [s for element in node.elts for s in _strings(element, names)]
    if isinstance(node, ast.Name):
        return names.get(node.id, [])
    if isinstance(node, ast.Subscript):  # texts[0]
        return _strings(node.value, names)
    return []


def model_texts(text: str) -> set[str]:
    """The prompts, sentences and documents the runnable blocks of a Markdown text give the
    models."""
    found: set[str] = set()
    names: dict[str, list[str]] = {}
    for block in (b for b in blocks(text) if b.skip is None):
        if block.kind == "bash":
            found.update(CLI_TEXT.findall(block.code))
            for lines in PRINTF_LINES.findall(block.code):
                found.update(line for line in lines.split("\\n") if line)
        if block.kind != "python":
            continue
        tree = ast.parse(block.code)
        for node in ast.walk(tree):
            if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name):
                names[node.targets[0].id] = _strings(node.value, {})
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            name = getattr(node.func, "id", getattr(node.func, "attr", None))
            if name in TEXT_CALLS | FIRST_ARGUMENT_ONLY:
                args = node.args[:1] if name in FIRST_ARGUMENT_ONLY else node.args
                found.update(s for arg in args for s in _strings(arg, names))
    return found


def test_model_texts_finds_calls_names_and_commands():
    text = (
        '```python\ntexts = ["Lithium toxicity.", "Tumor growth."]\nembed(texts, model=m)\n'
        'lm.tokenizer(["Aspirin inhibits"], padding=True)\nprint("not a text")\n```\n'
        '```bash\nbiomed-jax generate "Famotidine is" --max-new-tokens 8\n'
        "printf 'Aspirin for fever.\\nFever.\\n' > docs.txt\n```\n"
    )
    assert model_texts(text) == {
        "Lithium toxicity.",
        "Tumor growth.",
        "Aspirin inhibits",
        "Famotidine is",
        "Aspirin for fever.",
        "Fever.",
    }


def test_every_documented_text_tokenizes_without_unknown_tokens():
    """The tiny models of the docs (`conformance.tiny`) know every word the docs give them."""
    from biomed_jax import BertTokenizer, BioGptTokenizer
    from conformance import corpus, tiny

    texts = set()
    for doc in DOCS:
        if str(doc.relative_to(REPO)) not in OWN_VOCABULARY:
            texts |= model_texts(doc.read_text(encoding="utf-8"))
    assert {"Aspirin inhibits", "Famotidine is", "Aspirin is used to treat [MASK]."} <= texts
    bert = BertTokenizer(vocab={token: i for i, token in enumerate(tiny.bert_vocab())})
    biogpt = BioGptTokenizer(tiny.biogpt_vocab(), corpus.BIOGPT_MERGES)
    for text in sorted(texts):
        assert bert.unk_token_id not in bert(text)["input_ids"], text
        assert biogpt.unk_token_id not in biogpt(text)["input_ids"], text


def test_the_cli_table_lists_every_command_and_option():
    import argparse

    from biomed_jax.cli import build_parser

    page = (REPO / "docs" / "pipelines-and-cli.md").read_text(encoding="utf-8")
    table = {
        row.split("`")[1].split()[0]: row for row in page.splitlines() if row.startswith("| `")
    }
    commands = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    assert set(table) == set(commands.choices)
    multi_host = {"--distributed", "--coordinator", "--num-processes", "--process-id"}
    sharding = (REPO / "docs" / "sharding.md").read_text(encoding="utf-8")
    assert all(flag in sharding for flag in multi_host)  # the embed row points there
    for name, parser in commands.choices.items():
        options = {s for a in parser._actions for s in a.option_strings if s.startswith("--")}
        options -= {"--help", *(multi_host if name == "embed" else ())}
        missing = sorted(o for o in options if not re.search(rf"{o}(?![\w-])", table[name]))
        assert not missing, f"the {name} row lacks {missing}"


LINK = re.compile(r"\]\(([^)\s]+)\)")


def heading_anchor(heading: str) -> str:
    """GitHub's anchor of a Markdown heading: lower case, punctuation dropped, spaces to '-'."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_relative_links_reach_a_file_and_its_section():
    """Every relative link of README.md and docs/*.md names an existing file and, after '#', one
    of its headings (a pointer to a section that moved fails here)."""
    broken = []
    for doc in DOCS:
        text = doc.read_text(encoding="utf-8")
        fenced = {i for b in blocks(text) for i in range(b.line - 1, b.line + b.code.count("\n"))}
        for number, line in enumerate(text.splitlines(), 1):
            for target in LINK.findall(line) if number not in fenced else ():
                if re.match(r"[a-z]+:", target):
                    continue
                path, _, anchor = target.partition("#")
                file = (doc.parent / path).resolve() if path else doc
                if not file.exists():
                    broken.append(f"{doc.name}:{number}: {target} (no such file)")
                elif anchor:
                    headings = [
                        h.lstrip("#") for h in file.read_text().splitlines() if h.startswith("#")
                    ]
                    if anchor not in {heading_anchor(h) for h in headings}:
                        broken.append(f"{doc.name}:{number}: {target} (no such section)")
    assert not broken, broken


def free_names(code: str) -> set[str]:
    """Names a Python block reads but neither defines, imports nor finds among the builtins."""
    import builtins
    import symtable

    top = symtable.symtable(code, "<block>", "exec")
    bound = {s.get_name() for s in top.get_symbols() if s.is_assigned() or s.is_imported()}
    read: set[str] = set()

    def visit(table: symtable.SymbolTable) -> None:
        for symbol in table.get_symbols():
            if symbol.is_referenced() and (table is top or symbol.is_global()):
                read.add(symbol.get_name())
        for child in table.get_children():
            visit(child)

    visit(top)
    return read - bound - set(dir(builtins))


def test_free_names():
    assert free_names("import numpy as np\nx = np.ones(2)\nprint([y + x for y in z])\n") == {"z"}


def test_each_readme_example_runs_alone():
    """A reader copies one example: it must not lean on names an earlier one defined."""
    readme = REPO / "README.md"
    for block in blocks(readme.read_text(encoding="utf-8")):
        if block.kind == "python":
            assert not free_names(block.code), f"README.md:{block.line}: {free_names(block.code)}"


def test_no_install_line_names_an_index_package_that_is_not_there():
    """biomed-jax is not on PyPI: every `pip install` of it names a checkout or a git URL."""
    from_index = re.compile(
        r"pip install[^#&;|]*?(?<![\w/.@-])['\"]?biomed-jax(?:\[[\w,]+\])?(?![\w\[])['\"]?(?! @)"
    )
    found = [
        f"{doc.relative_to(REPO)}:{number}: {line.strip()}"
        for doc in DOCS
        for number, line in enumerate(doc.read_text(encoding="utf-8").splitlines(), 1)
        if from_index.search(line)
    ]
    assert not found, found


def test_a_run_says_why_tests_were_skipped(tmp_path):
    """pyproject's addopts: the summary gives every skip's reason, one line per reason and place
    (docs/development.md, "Running the tests")."""
    (tmp_path / "test_skips.py").write_text(
        "import pytest\n\n\n@pytest.mark.parametrize('i', range(5))\ndef test_x(i):\n"
        "    pytest.skip('real data not found')\n"
    )
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-c", str(REPO / "pyproject.toml"), "-p",
         "no:cacheprovider", "--rootdir", str(tmp_path), str(tmp_path / "test_skips.py")],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    skipped = [line for line in done.stdout.splitlines() if line.startswith("SKIPPED")]
    assert skipped == ["SKIPPED [5] test_skips.py:6: real data not found"], done.stdout

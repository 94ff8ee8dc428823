"""Every Python code block of README.md and docs/*.md runs as pasted.

Each ```python block is one test case, run on its own (nothing carries over from the block
before it) in a temporary working directory, so the files it writes are left behind there.
Blocks that import Keras run in a subprocess with ``KERAS_BACKEND`` removed from the
environment, as a user's fresh interpreter would (Keras fixes its backend once per process);
the others run in this process, which is much faster, on one torch thread (as the examples
train), with torch's thread count and matplotlib's figures put back afterwards. Shell, console and output blocks are not run.

A block can carry marks in an HTML comment on the line just before it (invisible on the
rendered page)::

    <!-- snippet: slow -->         trains for long: the ``slow`` marker, which the default run
                                   deselects (``pytest -m slow tests/test_snippets.py`` runs
                                   them)
    <!-- snippet: data -->         reads ../shared/data (``mdnkit.datasets.default_data_root``):
                                   skipped when that folder is absent
    <!-- snippet: slow, data -->   both

The default run stays lean: every unmarked block uses small settings (a few seconds each on a
two-core machine). One more check keeps the API reference whole: docs/api/*.md name every
module of the package.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
MARKS = {"slow", "data"}

_FENCE = re.compile(r"^(?P<fence>```+|~~~+)\s*(?P<info>[^\n`]*)$")
_MARK = re.compile(r"^<!--\s*snippet:\s*(?P<marks>[^>]*?)\s*-->\s*$")


def python_blocks(path: Path) -> list[tuple[int, str, set[str]]]:
    """``(first line of code, code, marks)`` for each ```python block of a Markdown file."""
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks, i = [], 0
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        fence, lang = m["fence"], m["info"].strip().split(" ")[0].lower()
        end = next((j for j in range(i + 1, len(lines)) if lines[j].strip() == fence), len(lines))
        if lang in ("python", "py", "python3"):
            prev = _MARK.match(lines[i - 1]) if i else None
            marks = {s.strip() for s in prev["marks"].split(",")} if prev else set()
            unknown = marks - MARKS
            if unknown:
                raise ValueError(f"{path.name}:{i}: unknown snippet marks {sorted(unknown)}")
            blocks.append((i + 2, "\n".join(lines[i + 1 : end]) + "\n", marks))
        i = end + 1
    return blocks


def _cases() -> list:
    cases = []
    for page in PAGES:
        for line, code, marks in python_blocks(page):
            name = f"{page.relative_to(ROOT)}:{line}"
            kw = {"marks": [pytest.mark.slow]} if "slow" in marks else {}
            cases.append(pytest.param(name, code, marks, id=name, **kw))
    return cases


CASES = _cases()


def _data_present() -> bool:
    from mdnkit.datasets import default_data_root

    return default_data_root().is_dir()


def _run_in_subprocess(name: str, code: str, line: int, cwd: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "KERAS_BACKEND"}
    env.update(MPLBACKEND="Agg", JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT / "src"))
    script = cwd / "snippet.py"
    script.write_text("\n" * (line - 1) + code, encoding="utf-8")
    proc = subprocess.run(
        [sys.executable, str(script)], cwd=cwd, env=env, capture_output=True, text=True
    )
    assert proc.returncode == 0, f"{name} failed:\n{proc.stderr[-4000:]}"


def _run_here(name: str, code: str, line: int) -> None:
    import matplotlib
    import torch

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    threads = torch.get_num_threads()
    # padded so that a traceback names the page's own line numbers
    compiled = compile("\n" * (line - 1) + code, name.rsplit(":", 1)[0], "exec")
    try:
        # one thread, as the examples train: on a small loaded machine a second thread makes
        # small networks (LSTMs above all) many times slower, and no block measures speed
        torch.set_num_threads(1)
        exec(compiled, {"__name__": "__snippet__"})
    finally:
        torch.set_num_threads(threads)
        plt.close("all")


def test_every_page_is_scanned():
    # the parser finds the blocks it should (a fence it missed would silently test nothing)
    found = {page.name: len(python_blocks(page)) for page in PAGES}
    assert found["README.md"] >= 4 and found["python-api.md"] >= 3
    assert sum(found.values()) == len(CASES)


@pytest.mark.parametrize(("name", "code", "marks"), CASES)
def test_snippet_runs(name, code, marks, tmp_path, monkeypatch):
    if "data" in marks and not _data_present():
        pytest.skip("needs ../shared/data (or $MDNKIT_DATA)")
    line = int(name.rsplit(":", 1)[1])
    monkeypatch.chdir(tmp_path)
    if re.search(r"^\s*(import keras|from keras\b)", code, re.M):
        _run_in_subprocess(name, code, line, tmp_path)
    else:
        _run_here(name, code, line)


def test_api_reference_names_every_module():
    # docs/api/*.md document the package module by module: a new module needs its place there
    import pkgutil

    import mdnkit

    text = "\n".join(p.read_text(encoding="utf-8") for p in (ROOT / "docs" / "api").glob("*.md"))
    documented = set(re.findall(r"^\.\. automodule:: ([\w.]+)$", text, re.M))
    modules = {"mdnkit"} | {m.name for m in pkgutil.walk_packages(mdnkit.__path__, "mdnkit.")}
    modules.discard("mdnkit.__main__")  # `python -m mdnkit`: the command line's entry point
    assert sorted(modules - documented) == [], "modules missing from docs/api/*.md"
    assert sorted(documented - modules) == [], "docs/api/*.md names modules that do not exist"

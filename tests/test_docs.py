"""The documentation is tested (issue 27): every Python and shell example in README.md and docs/
runs, every relative link, anchor and image path resolves, and the generated pages are current.

Marking examples. Every fenced ``python`` / ``bash`` / ``sh`` block must be preceded by a marker:

* ``<!-- test: skip: REASON -->``: not run here, with the reason (e.g. the 15-minute main job,
  which CI runs in its quick mode);
* ``<!-- test: run -->``: run as written, in a fresh temporary folder (``tests/replicas/`` linked in as ``replicas/``);
  or with options, one per line before the closing ``-->``:

  - ``replace: OLD => NEW``: run with every OLD replaced by NEW (to make a real example tiny,
    e.g. fewer rounds). OLD must occur, so the example and the test cannot drift apart;
  - ``setup: photos``: a small folder ``photos/`` of mixed-size JPEG/PNG images in two classes.

Python blocks run with this interpreter, shell blocks with ``bash -e`` and this interpreter's
``bin/`` first on PATH (so ``miue`` is the installed command).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAGES = ["README.md"] + sorted(os.path.join("docs", f) for f in os.listdir(os.path.join(ROOT, "docs"))
                               if f.endswith(".md"))
LANGS = {"python": "python", "py": "python", "bash": "bash", "sh": "bash", "shell": "bash"}
MARKER = re.compile(r"<!--\s*test:\s*(run|skip)(.*?)-->\s*$", re.S)


def _blocks(page: str):
    """(line number, language, code, marker kind, marker text) of every fenced block."""
    lines = open(os.path.join(ROOT, page), encoding="utf-8").read().split("\n")
    out, i = [], 0
    while i < len(lines):
        m = re.match(r"^```(\w*)\s*$", lines[i])
        if not m:
            i += 1
            continue
        start, lang = i, m.group(1).lower()
        j = i + 1
        while j < len(lines) and not lines[j].startswith("```"):
            j += 1
        code = "\n".join(lines[start + 1:j])
        # the marker: the comment ending on the closest non-empty line above the fence
        k = start - 1
        while k >= 0 and not lines[k].strip():
            k -= 1
        kind, text = None, ""
        if k >= 0 and lines[k].rstrip().endswith("-->"):
            top = k
            while top >= 0 and "<!--" not in lines[top]:
                top -= 1
            mm = MARKER.search("\n".join(lines[top:k + 1]))
            if mm:
                kind, text = mm.group(1), mm.group(2)
        out.append((start + 1, lang, code, kind, text))
        i = j + 1
    return out


def _examples():
    for page in PAGES:
        for line, lang, code, kind, text in _blocks(page):
            if lang in LANGS:
                yield pytest.param(page, line, LANGS[lang], code, kind, text, id=f"{page}:{line}")


EXAMPLES = list(_examples())


def test_every_example_is_marked():
    unmarked = [p.id for p in EXAMPLES if p.values[4] is None]
    assert not unmarked, f"fenced examples without a <!-- test: run|skip --> marker: {unmarked}"
    reasonless = [p.id for p in EXAMPLES if p.values[4] == "skip" and len(p.values[5].strip(" :\n")) < 10]
    assert not reasonless, f"skipped examples must say why: {reasonless}"
    assert sum(p.values[4] == "run" for p in EXAMPLES) >= 6  # the marker parser found the runnable ones


def _photos(root: str) -> None:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in ("cats", "dogs"):
        for i in range(6):
            w, h = (int(v) for v in rng.integers(24, 60, 2))
            sub = os.path.join(root, c, "holiday" if i % 3 == 0 else "")
            os.makedirs(sub, exist_ok=True)
            arr = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
            ext, fmt = (".jpg", "JPEG") if i % 2 else (".png", "PNG")
            Image.fromarray(arr).save(os.path.join(sub, f"photo {i}{ext}"), format=fmt)


def _apply(code: str, text: str, where: str) -> tuple[str, list[str]]:
    setups = []
    for raw in text.strip().splitlines():
        line = raw.strip()
        if not line:
            continue
        key, _, value = line.partition(":")
        if key == "replace":
            old, sep, new = value.strip().partition(" => ")
            assert sep, f"{where}: a replace line needs 'OLD => NEW': {line!r}"
            assert old in code, f"{where}: the example no longer contains {old!r} (update its marker)"
            code = code.replace(old, new)
        elif key == "setup":
            setups.append(value.strip())
        else:
            raise AssertionError(f"{where}: unknown marker option {line!r}")
    return code, setups


@pytest.mark.slow  # every example of the docs, run as written (minutes)
@pytest.mark.parametrize("page,line,lang,code,kind,text", EXAMPLES)
def test_example_runs(page, line, lang, code, kind, text, tmp_path):
    if kind != "run":
        pytest.skip(f"marked skip: {text.strip(' :')}")
    where = f"{page}:{line}"
    code, setups = _apply(code, text, where)
    if "fashion-mnist" in code:
        from miue.data import DatasetError, fashion_mnist_dir

        try:
            fashion_mnist_dir()
        except DatasetError:
            pytest.skip("needs Fashion-MNIST (apt-get install dataset-fashion-mnist)")
    for s in setups:
        assert s == "photos", f"{where}: unknown setup {s!r}"
        _photos(str(tmp_path / "photos"))
    os.symlink(os.path.join(ROOT, "tests", "replicas"), tmp_path / "replicas")
    env = {**os.environ, "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""),
           "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    if lang == "python":
        script = tmp_path / "example.py"
        script.write_text(code)
        cmd = [sys.executable, str(script)]
    else:
        cmd = ["bash", "-e", "-c", code]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, (f"{where} failed ({proc.returncode}):\n--- code\n{code}\n--- stdout\n"
                                  f"{proc.stdout[-3000:]}\n--- stderr\n{proc.stderr[-3000:]}")


# --------------------------------------------------------------------------- links


def _slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def _anchors(path: str) -> set[str]:
    anchors, fence = set(), False
    for line in open(path, encoding="utf-8"):
        if line.startswith("```"):
            fence = not fence
        elif not fence and line.startswith("#"):
            anchors.add(_slug(line.lstrip("#")))
    return anchors


LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


@pytest.mark.parametrize("page", PAGES)
def test_links_and_images_resolve(page):
    path = os.path.join(ROOT, page)
    text = open(path, encoding="utf-8").read()
    text = re.sub(r"```.*?```", "", text, flags=re.S)  # links inside code are not links
    bad = []
    for target in LINK.findall(text):
        if re.match(r"^[a-z]+:", target):  # http:, https:, mailto:
            continue
        file, _, anchor = target.partition("#")
        dest = os.path.normpath(os.path.join(os.path.dirname(path), file)) if file else path
        if not os.path.exists(dest):
            bad.append(f"{target} (no {os.path.relpath(dest, ROOT)})")
        elif anchor and dest.endswith(".md") and anchor not in _anchors(dest):
            bad.append(f"{target} (no heading #{anchor} in {os.path.relpath(dest, ROOT)})")
    assert not bad, f"{page}: broken links: {bad}"


def test_every_docs_page_is_linked_from_readme():
    readme = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    missing = [p for p in PAGES if p != "README.md" and f"]({p})" not in readme]
    assert not missing, f"docs pages not linked from README.md: {missing}"


def test_readme_is_a_landing_page():
    lines = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read().split("\n")
    assert len(lines) <= 200, f"README.md has {len(lines)} lines; details belong in docs/"
    text = "\n".join(lines)
    first_code = text.index("```")
    assert "bash scripts/demo.sh" in text[first_code:first_code + 200]  # the two commands come first
    assert text.index("bash scripts/test.sh") < text.index("```python")


# --------------------------------------------------------------------------- generated pages


@pytest.mark.skipif(sys.version_info[:2] != (3, 11), reason="argparse's help layout differs between Python versions; "
                                                          "docs/cli.md is generated with Python 3.11")
def test_generated_docs_are_current():
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "gen_docs.py"), "--check"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr + "\n(run: python scripts/gen_docs.py)"


def test_cli_page_lists_every_flag():
    """Whatever the Python version: every option of every subcommand appears in docs/cli.md."""
    import argparse

    from miue.cli import build_parser

    page = open(os.path.join(ROOT, "docs", "cli.md"), encoding="utf-8").read()
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    missing = []
    for name, p in sub.choices.items():
        assert f"## `miue {name}`" in page, name
        for action in p._actions:
            for opt in action.option_strings:
                if opt.startswith("--") and opt not in page:
                    missing.append(f"{name} {opt}")
    assert not missing, f"flags missing from docs/cli.md: {missing}"

"""Keep the README's example outputs true: rerun each marked command and rewrite its output block.

    python benchmarks/readme_outputs.py            # rewrite README.md in place
    python benchmarks/readme_outputs.py --check    # exit 1 and name the stale blocks (the tests run this)

A marker line ``<!-- output: COMMAND -->`` must be followed by a fenced block; the block is
replaced by what COMMAND prints. Between ``<!-- table: COMMAND -->`` and ``<!-- end -->`` the
output goes in unfenced (commands that print Markdown tables). COMMAND is ``simulate ARGS``,
``python -m MODULE ARGS`` or ``python SCRIPT.py ARGS`` (run in-process, in a temporary folder that
links the repository's top-level entries, so relative paths read the checkout and what a command
writes lands in the temporary folder, never in the tracked tree), optionally ending in ``| head -N``.
A command that fails shows as ``$ COMMAND`` followed by its stderr, as a terminal would.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
import io
import os
import re
import shlex
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MARKER = re.compile(r"^<!-- output: (?P<cmd>.+?) -->\n```[a-z]*\n(?P<body>.*?)^```\n", re.S | re.M)
#: Markdown that a command prints (tables), kept unfenced between the marker and ``<!-- end -->``.
TABLE = re.compile(r"^<!-- table: (?P<cmd>.+?) -->\n(?P<body>.*?)^<!-- end -->\n", re.S | re.M)


def run(command: str) -> str:
    """What ``command`` prints, run in-process in a temporary folder that links the checkout's entries."""
    head = None
    if "| head -" in command:
        command, _, n = command.rpartition("| head -")
        head = int(n)
    argv = shlex.split(command)
    if argv[0] == "simulate":
        entry = importlib.import_module("sparsesim.cli.main").main
        args = argv[1:]
    elif argv[:2] == ["python", "-m"]:
        entry = importlib.import_module(argv[2]).main
        args = argv[3:]
    elif argv[0] == "python" and argv[1].endswith(".py"):
        folder = str((ROOT / argv[1]).parent)
        if folder not in sys.path:  # the scripts import their neighbours (benchmarks/ is not a package)
            sys.path.insert(0, folder)
        spec = importlib.util.spec_from_file_location(Path(argv[1]).stem, ROOT / argv[1])
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        entry, args = module.main, argv[2:]
    else:
        raise ValueError(f"command {command!r}; allowed: 'simulate ...', 'python -m MODULE ...' "
                         f"or 'python SCRIPT.py ...'")
    out, err = io.StringIO(), io.StringIO()
    cwd = os.getcwd()
    with tempfile.TemporaryDirectory(prefix="sparsesim-readme-") as work:
        for entry_path in ROOT.iterdir():
            if not entry_path.name.startswith("."):
                os.symlink(entry_path, Path(work) / entry_path.name)
        os.chdir(work)
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                try:
                    code = entry(args)
                except SystemExit as exc:
                    code = exc.code
        finally:
            os.chdir(cwd)
    text = out.getvalue() if not code else f"$ {command.strip()}\n{err.getvalue()}"
    lines = text.rstrip("\n").splitlines()
    if head is not None:
        lines = lines[:head] + ["..."]
    return "\n".join(line.rstrip() for line in lines) + "\n"


def refresh(text: str) -> tuple[str, list[str]]:
    """The README with every marked block regenerated, and the commands whose output changed."""
    stale: list[str] = []

    def sub(m: re.Match[str]) -> str:
        body = run(m["cmd"])
        if body != m["body"]:
            stale.append(m["cmd"])
        fence = m.group(0).split("\n", 2)[1]
        return f"<!-- output: {m['cmd']} -->\n{fence}\n{body}```\n"

    def sub_table(m: re.Match[str]) -> str:
        body = run(m["cmd"])
        if body != m["body"]:
            stale.append(m["cmd"])
        return f"<!-- table: {m['cmd']} -->\n{body}<!-- end -->\n"

    return TABLE.sub(sub_table, MARKER.sub(sub, text)), stale


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only report stale blocks (exit 1 if any)")
    parser.add_argument("--readme", type=Path, default=ROOT / "README.md")
    args = parser.parse_args(argv)
    text = args.readme.read_text()
    new, stale = refresh(text)
    for cmd in stale:
        print(f"stale: {cmd}", file=sys.stderr)
    if args.check:
        return 1 if stale else 0
    if new != text:
        tmp = args.readme.with_suffix(".md.tmp")
        tmp.write_text(new)
        tmp.replace(args.readme)
    print(f"{len(MARKER.findall(text)) + len(TABLE.findall(text))} blocks, {len(stale)} rewritten")
    return 0


if __name__ == "__main__":
    sys.exit(main())

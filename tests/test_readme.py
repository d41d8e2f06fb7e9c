"""The README stays true: its example outputs are what the commands print, its test command is CI's."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _readme_outputs():
    spec = importlib.util.spec_from_file_location("readme_outputs", ROOT / "benchmarks" / "readme_outputs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_readme_example_outputs_are_current():
    text = (ROOT / "README.md").read_text()
    _, stale = _readme_outputs().refresh(text)
    assert not stale, f"stale README outputs (run python benchmarks/readme_outputs.py): {stale}"


def test_readme_commands_match_ci():
    text = (ROOT / "README.md").read_text()
    assert "pip install -e . && simulate" in text
    ci = (ROOT / ".ci" / "run").read_text()
    (test_cmd,) = re.findall(r"^(pip install torch==.+)$", ci, re.M)
    assert f"```bash\n{test_cmd}\n```" in text


def test_refresh_detects_a_stale_block():
    module = _readme_outputs()
    stale_text = "<!-- output: simulate gpus -->\n```\nold output\n```\n"
    new, stale = module.refresh(stale_text)
    assert stale == ["simulate gpus"] and "H100" in new and "old output" not in new

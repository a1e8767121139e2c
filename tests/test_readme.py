"""The README's Python example, run as a user would paste it (in a fresh interpreter), prints what it says."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def readme_block(after: str, lang: str) -> str:
    text = (ROOT / "README.md").read_text()
    start = text.index(after)
    m = re.compile(rf"```{lang}\n(.*?)```", re.S).search(text, start)
    assert m, f"no ```{lang} block after {after!r}"
    return m.group(1)


def test_lake_example_prints_what_the_readme_says(tmp_path):
    code = readme_block("## The Delta table layer", "python")
    expected = readme_block("prints\n", "")
    lake_root = str(tmp_path / "coupon-lake")
    code = code.replace("/tmp/coupon-lake", lake_root)
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().splitlines() == expected.replace("/tmp/coupon-lake", lake_root).strip().splitlines()

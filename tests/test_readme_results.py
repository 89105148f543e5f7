"""The README's result tables are generated from the result files the benchmarks and the demo write
(bench/results/*.json, by bench/readme.py); a hand edit of a figure fails this check in CI."""

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
README, RESULTS = REPO / "README.md", REPO / "bench" / "results"


def check(readme: Path, results: Path = RESULTS) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "bench" / "readme.py"), "--check", "--readme", str(readme), "--results", str(results)],
                          capture_output=True, text=True, timeout=60)


def test_readme_matches_the_result_files():
    r = check(README)
    assert r.returncode == 0, r.stdout + r.stderr
    blocks = re.findall(r"<!-- results: ([\w.-]+) -->", README.read_text())
    assert blocks, "the README has no generated result blocks"
    for name in blocks:
        record = json.loads((RESULTS / f"{name}.json").read_text())
        assert record["rows"] and all(record[k] for k in ("command", "commit", "date", "host"))
        # Every figure in the file is in the README's block, in order.
        block = README.read_text().split(f"<!-- results: {name} -->", 1)[1].split("<!-- /results -->", 1)[0]
        cells = [c.strip() for line in block.splitlines() if line.startswith("| ") for c in line.strip("|").split("|")]
        assert cells == [*record["columns"], *(c for row in record["rows"] for c in row)]


def test_a_hand_edited_figure_fails_the_check(tmp_path):
    text = README.read_text()
    name = re.findall(r"<!-- results: ([\w.-]+) -->", text)[0]
    record = json.loads((RESULTS / f"{name}.json").read_text())
    figure = record["rows"][0][-1]
    head, block = text.split(f"<!-- results: {name} -->", 1)
    edited = head + f"<!-- results: {name} -->" + block.replace(f"| {figure} |", f"| {figure}9 |", 1)
    assert edited != text
    (tmp_path / "README.md").write_text(edited)
    r = check(tmp_path / "README.md")
    assert r.returncode == 1 and f"-| {' | '.join(record['rows'][0][:-1])} | {figure}9 |" in r.stdout


def test_a_result_file_without_its_block_or_a_block_without_its_file(tmp_path):
    shutil.copytree(RESULTS, tmp_path / "results")
    (tmp_path / "README.md").write_text(README.read_text() + "\n<!-- results: not-measured -->\n<!-- /results -->\n")
    r = check(tmp_path / "README.md", tmp_path / "results")
    assert r.returncode != 0 and "not-measured" in r.stdout + r.stderr

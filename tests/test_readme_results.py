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
    row = record["rows"][0]
    line = "| " + " | ".join(row) + " |"
    edited_line = "| " + " | ".join([*row[:-1], row[-1] + "9"]) + " |"
    assert text.count(line) == 1
    (tmp_path / "README.md").write_text(text.replace(line, edited_line))
    r = check(tmp_path / "README.md")
    assert r.returncode == 1 and f"-{edited_line}\n+{line}" in r.stdout


def test_a_result_file_without_its_block_or_a_block_without_its_file(tmp_path):
    shutil.copytree(RESULTS, tmp_path / "results")
    (tmp_path / "README.md").write_text(README.read_text() + "\n<!-- results: not-measured -->\n<!-- /results -->\n")
    r = check(tmp_path / "README.md", tmp_path / "results")
    assert r.returncode != 0 and "not-measured" in r.stdout + r.stderr


# A figure with a unit of speed, time or accuracy in a comment or docstring goes stale: they belong in
# result files and the README. Goals (">= 94%", ">10% faster") and settings are not measurements.
MEASUREMENT = re.compile(r"[0-9][0-9.,]*\s?(ms|us|images/s|img/s|req/s|requests/s|MB/s)\b|measured[^.\n]*[0-9]|[0-9.]+x (faster|slower)\b|"
                         r"[0-9.]+% (top-1|test accuracy|accuracy)")


def test_no_measurements_in_code_comments():
    found = []
    for path in [*REPO.glob("src/**/*.py"), *REPO.glob("jobs/*"), *REPO.glob("conf/**/*.yaml"), *REPO.glob("cluster/*.yaml")]:
        in_doc = False
        for no, line in enumerate(path.read_text().splitlines(), 1):
            quotes = line.count('"""')
            comment = line.split("#", 1)[1] if "#" in line and not line.lstrip().startswith(("f\"", "\"")) else ""
            text = line if in_doc or quotes else comment
            if quotes % 2:
                in_doc = not in_doc
            if "f\"" in text or "print(" in text or "log." in text:
                continue  # strings the program prints are computed, not written down
            if MEASUREMENT.search(text):
                found.append(f"{path.relative_to(REPO)}:{no}: {line.strip()}")
    assert not found, "measurements in comments or docstrings (move them to a result file / the README):\n" + "\n".join(found)

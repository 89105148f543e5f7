"""The README's result tables, generated from ``bench/results/*.json`` (written by the benchmarks
and the demo, see ``bench/results.py``).

    python bench/readme.py            # rewrite every <!-- results: NAME --> ... <!-- /results --> block
    python bench/readme.py --check    # exit 1, with a diff, when the README differs from the files (CI runs this)
"""

from __future__ import annotations

import argparse
import difflib
import json
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BLOCK = re.compile(r"(<!-- results: (?P<name>[\w.-]+) -->\n)(?P<body>.*?)(<!-- /results -->)", re.S)


def render(record: dict) -> str:
    cols, align = record["columns"], record["align"]
    rule = ["---:" if a == "r" else "---" for a in align]
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join(rule) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in record["rows"]]
    lines.append("")
    for note in record["notes"]:
        lines += [note, ""]
    lines.append(f"*`{record['command']}` on commit {record['commit']}, {record['date']}; host: {record['host']}; "
                 f"load average {record['load']} at the end.*")
    return "\n".join(lines) + "\n"


def generate(readme: str, results: Path) -> str:
    missing = []

    def fill(m: re.Match) -> str:
        path = results / f"{m['name']}.json"
        if not path.exists():
            missing.append(m["name"])
            return m.group(0)
        return m.group(1) + render(json.loads(path.read_text())) + m.group(4)

    out = BLOCK.sub(fill, readme)
    if missing:
        raise SystemExit(f"README blocks without a result file in {results}: {missing}")
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true", help="do not write; exit 1 if the README is not what the result files give")
    ap.add_argument("--readme", type=Path, default=REPO / "README.md")
    ap.add_argument("--results", type=Path, default=REPO / "bench" / "results")
    args = ap.parse_args()
    current = args.readme.read_text()
    wanted = generate(current, args.results)
    unused = sorted({p.stem for p in args.results.glob("*.json")} - set(m["name"] for m in BLOCK.finditer(current)))
    if unused:
        print(f"note: result files no README block shows: {unused}", file=sys.stderr)
    if args.check:
        if wanted != current:
            sys.stdout.writelines(difflib.unified_diff(current.splitlines(True), wanted.splitlines(True), "README.md", "generated from bench/results"))
            print(f"\n{args.readme} differs from {args.results}: edit the result files' sources, rerun the benchmark, "
                  "or run python bench/readme.py", file=sys.stderr)
            return 1
        print(f"{args.readme}: {len(BLOCK.findall(current))} result blocks match {args.results}")
        return 0
    if wanted != current:
        args.readme.write_text(wanted)
        print(f"rewrote {args.readme}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

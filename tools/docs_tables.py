"""Refreshes the result tables in docs pages from the runs' JSON: every block between
`<!-- table: COMMAND -->` and `<!-- end table -->` is replaced by what COMMAND prints,
run by bash from the repository root (a `python3 tools/...` command over `results/`).

    python3 tools/docs_tables.py docs/overconfident.md docs/hydra.md
"""

import re
import subprocess
import sys

BLOCK = re.compile(r"(<!-- table: (.+?) -->\n)(.*?)(<!-- end table -->)", re.S)


def refresh(path):
    text = open(path).read()

    def fill(m):
        out = subprocess.run(
            m.group(2), shell=True, executable="/bin/bash", check=True, capture_output=True, text=True
        )
        return m.group(1) + out.stdout + m.group(4)

    new = BLOCK.sub(fill, text)
    if new != text:
        open(path, "w").write(new)
        print(f"{path}: tables refreshed")


if __name__ == "__main__":
    for p in sys.argv[1:]:
        refresh(p)

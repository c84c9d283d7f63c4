"""Run one Markdown file's code blocks in order (the docs test's child process).

argv: a JSON file of blocks [{"kind": "python"|"bash", "code", "file", "line"}]. Python blocks
share one namespace; bash blocks run with `bash -euo pipefail` in the current directory. A
traceback names the Markdown file and line; the first failing block ends the run (exit 1).
"""

from __future__ import annotations

import json
import subprocess
import sys


def main(blocks_file: str) -> int:
    with open(blocks_file, encoding="utf-8") as f:
        blocks = json.load(f)
    namespace = {"__name__": "__main__"}
    for block in blocks:
        where = f"{block['file']}:{block['line']}"
        print(f"--- {block['kind']} block at {where}", flush=True)
        if block["kind"] == "python":
            # Blank lines before the code, so tracebacks show the Markdown file's own lines.
            source = "\n" * block["line"] + block["code"]
            exec(compile(source, block["file"], "exec"), namespace)
        else:
            done = subprocess.run(["bash", "-euo", "pipefail", "-c", block["code"]])
            if done.returncode:
                print(f"{where}: bash block exited {done.returncode}", file=sys.stderr)
                return 1
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))

"""python-dotenv's reading of many .env files, in one process (tests/dotenv.rs compares ours).

stdin: {"env": {NAME: VALUE}, "files": [PATH, ...]}; os.environ is exactly `env` while reading.
stdout: one JSON object per file, in order, each {"file": R, "stream": R} where R is
{"values": [[KEY, VALUE or null], ...], "lines": [N, ...]}: "file" is dotenv_values(PATH) (what
pydantic-settings calls: Python's text mode turns \\r\\n and \\r into \\n), "stream" is
dotenv_values(stream=StringIO(raw text)) (the grammar on the text as written). "lines" are the
line numbers of python-dotenv's "could not parse statement starting at line N" warnings.
"""

import io
import json
import logging
import os
import sys

from dotenv import dotenv_values

lines = []


class Lines(logging.Handler):
    def emit(self, record):
        lines.append(int(record.args[0]))


log = logging.getLogger("dotenv.main")
log.addHandler(Lines())
log.propagate = False


def read(**source):
    lines.clear()
    values = dotenv_values(**source)
    return {"values": [[k, v] for k, v in values.items()], "lines": list(lines)}


def main():
    request = json.load(sys.stdin)
    os.environ.clear()
    os.environ.update(request["env"])
    out = sys.stdout
    for path in request["files"]:
        with open(path, encoding="utf-8", newline="") as f:
            raw = f.read()
        result = {"file": read(dotenv_path=path), "stream": read(stream=io.StringIO(raw))}
        out.write(json.dumps(result))
        out.write("\n")


main()

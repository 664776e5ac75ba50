"""Print one closing line that sums up several pytest JUnit XML reports.

    python scripts/test_summary.py _build/test-reports/*.xml
    -> "summary: 42 passed, 0 failed, 3 skipped"

`make test` runs pytest twice (tests/ and `--nbval book/`); this line gives the totals
of both, so the last line of the output describes the whole run. Missing or unreadable
reports are reported and ignored.
"""

import sys
import xml.etree.ElementTree as ET
from pathlib import Path


def totals(paths):
    tests = failures = errors = skipped = 0
    for path in paths:
        try:
            root = ET.parse(path).getroot()
        except (OSError, ET.ParseError) as exc:
            print(f"test_summary: cannot read {path}: {exc}", file=sys.stderr)
            continue
        suites = [root] if root.tag == "testsuite" else root.iter("testsuite")
        for suite in suites:
            tests += int(suite.get("tests", 0))
            failures += int(suite.get("failures", 0))
            errors += int(suite.get("errors", 0))
            skipped += int(suite.get("skipped", 0))
    failed = failures + errors
    passed = tests - failed - skipped
    return passed, failed, skipped


def main(argv):
    paths = [Path(p) for p in argv if Path(p).is_file()]
    passed, failed, skipped = totals(paths)
    print(f"summary: {passed} passed, {failed} failed, {skipped} skipped")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

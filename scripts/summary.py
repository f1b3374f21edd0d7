"""
Turn trial's closing line, and the result of each further step of the test
command (the lint), into the one
`N passed, N failed[, N skipped]` line that CI reads, and exit non-zero
unless everything passed.

usage: summary.py TRIAL_STATUS TRIAL_LOG [STEP STATUS LOG]...

A step counts the `N passed, N failed` lines its log prints, if any; a
step whose log has none counts as one check, passed if its status is 0
(the lint).
"""
import re
import sys


def trialCounts(status, lines):
    """
    (passed, failed, skipped) from trial's C{PASSED (...)}/C{FAILED (...)} line.
    """
    for line in reversed(lines):
        match = re.match(r"^(PASSED|FAILED) \((.*)\)\s*$", line)
        if match:
            counts = {}
            for item in match.group(2).split(","):
                key, _, value = item.strip().partition("=")
                counts[key] = int(value)
            break
    else:
        print("trial printed no result line", file=sys.stderr)
        return 0, 1, 0
    passed = counts.get("successes", 0)
    failed = sum(counts.get(k, 0) for k in ("failures", "errors", "unexpectedSuccesses"))
    skipped = counts.get("skips", 0) + counts.get("expectedFailures", 0)
    if status != 0 and failed == 0:
        failed = 1
    return passed, failed, skipped


def stepCounts(status, lines):
    """
    (passed, failed, skipped) summed over a step's C{N passed, N failed}
    lines; a step that prints none is one check that passed if its status
    is 0, and a step that failed without saying why counts as one failure.
    """
    passed = failed = 0
    counted = False
    for line in lines:
        match = re.match(r"^(\d+) passed, (\d+) failed\s*$", line)
        if match:
            counted = True
            passed += int(match.group(1))
            failed += int(match.group(2))
    if not counted and status == 0:
        passed = 1
    if status != 0 and failed == 0:
        failed = 1
    return passed, failed, 0


def readLines(path):
    with open(path, encoding="utf-8", errors="replace") as f:
        return f.read().splitlines()


def main(argv):
    totals = trialCounts(int(argv[1]), readLines(argv[2]))
    steps = argv[3:]
    for i in range(0, len(steps) - 2, 3):
        name, status, log = steps[i : i + 3]
        counts = stepCounts(int(status), readLines(log))
        print("%s: %d passed, %d failed" % ((name,) + counts[:2]))
        totals = tuple(a + b for a, b in zip(totals, counts))
    passed, failed, skipped = totals
    print(f"{passed} passed, {failed} failed, {skipped} skipped")
    return 0 if failed == 0 and passed > 0 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))

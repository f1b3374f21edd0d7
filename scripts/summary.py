"""
Turn trial's closing line into the `N passed, N failed[, N skipped]` line that
CI reads, and exit non-zero unless every test passed.

usage: summary.py TRIAL_EXIT_STATUS TRIAL_LOG
"""
import re
import sys


def main(status, logPath):
    with open(logPath, encoding="utf-8", errors="replace") as f:
        lines = f.read().splitlines()
    counts = {}
    for line in reversed(lines):
        match = re.match(r"^(PASSED|FAILED) \((.*)\)\s*$", line)
        if match:
            for item in match.group(2).split(","):
                key, _, value = item.strip().partition("=")
                counts[key] = int(value)
            break
    else:
        print("0 passed, 1 failed")
        print("trial printed no result line", file=sys.stderr)
        return 1
    passed = counts.get("successes", 0)
    failed = sum(counts.get(k, 0) for k in ("failures", "errors", "unexpectedSuccesses"))
    skipped = counts.get("skips", 0) + counts.get("expectedFailures", 0)
    if status != 0 and failed == 0:
        failed = 1
    print(f"{passed} passed, {failed} failed, {skipped} skipped")
    return 0 if failed == 0 and passed > 0 else 1


if __name__ == "__main__":
    sys.exit(main(int(sys.argv[1]), sys.argv[2]))

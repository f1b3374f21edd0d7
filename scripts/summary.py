"""
Turn trial's closing line, and the conformance replay's scenario counts, into
the one `N passed, N failed[, N skipped]` line that CI reads, and exit non-zero
unless everything passed.

usage: summary.py TRIAL_STATUS TRIAL_LOG [REPLAY_STATUS REPLAY_LOG]
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


def replayCounts(status, lines):
    """
    (passed, failed, skipped) summed over the replay's per-group
    C{N passed, N failed} lines; a replay that failed without saying why
    counts as one failure.
    """
    passed = failed = 0
    for line in lines:
        match = re.match(r"^(\d+) passed, (\d+) failed\s*$", line)
        if match:
            passed += int(match.group(1))
            failed += int(match.group(2))
    if status != 0 and failed == 0:
        failed = 1
    return passed, failed, 0


def readLines(path):
    with open(path, encoding="utf-8", errors="replace") as f:
        return f.read().splitlines()


def main(argv):
    totals = trialCounts(int(argv[1]), readLines(argv[2]))
    if len(argv) > 3:
        replay = replayCounts(int(argv[3]), readLines(argv[4]))
        print("conformance: %d passed, %d failed" % replay[:2])
        totals = tuple(a + b for a, b in zip(totals, replay))
    passed, failed, skipped = totals
    print(f"{passed} passed, {failed} failed, {skipped} skipped")
    return 0 if failed == 0 and passed > 0 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))

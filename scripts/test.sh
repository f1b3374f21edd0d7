#!/usr/bin/env bash
# Set up the checkout, lint it (ruff, configured in pyproject.toml), start a
# private ZooKeeper on a free loopback port, run the whole test suite with trial
# (which includes the replay of the captured Java exchanges against our broker,
# tests/protocol/test_conformance.py), and finish with one line
# `N passed, N failed, N skipped` (a lint failure counts as a failure).
# Arguments, if any, replace the default test selection (`tests`).
set -u
cd "$(dirname "$0")/.."
bash scripts/setup.sh --test || exit 1
work=$(mktemp -d -t metaq-test.XXXXXX)
cleanup() { bash scripts/zookeeper.sh stop "$work/zk"; rm -rf "$work"; }
trap cleanup EXIT
.venv/bin/ruff check . > "$work/lint.log" 2>&1
lint_rc=$?
cat "$work/lint.log"
METAQ_TEST_ZK=$(bash scripts/zookeeper.sh start "$work/zk") || exit 1
export METAQ_TEST_ZK
echo "ZooKeeper for the tests: $METAQ_TEST_ZK"
jobs=$(nproc 2>/dev/null || echo 2); [ "$jobs" -gt 2 ] && jobs=2
.venv/bin/python -m twisted.trial --temp-directory="$work/trial" -j"$jobs" "${@:-tests}" 2>&1 | tee "$work/trial.log"
trial_rc=${PIPESTATUS[0]}
.venv/bin/python scripts/summary.py "$trial_rc" "$work/trial.log" lint "$lint_rc" "$work/lint.log"
exit $?  # not exec: the EXIT trap must stop ZooKeeper

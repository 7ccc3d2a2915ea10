#!/usr/bin/env python3
"""Checks the SQL of the ClickHouse adapter against a current ClickHouse, in chDB.

The cluster's tests run on Debian's ClickHouse 18.16; production runs current
releases. This script runs every statement the adapter sends, in order, on an
empty chDB (embedded ClickHouse, PyPI package `chdb-core`) and fails if any
statement errors or a query with a known answer returns something else.

Usage:

    python3 tests/cluster/chdb_dialect.py FILE

FILE is a JSON array written by `ClickHouseStore::dialect_check_json()` (the
test `dialect_statements_run_here_and_export` in crates/cluster/tests/clickhouse.rs
writes it to $SESSIONIZER_CH_STATEMENTS_OUT), each element:

    {"sql": "<one statement, values inlined>",
     "expect": {"rows": N, "column": "<name>", "values": ["<TSV text>", ...]}}

`expect` is optional. Queries run with the `TabSeparatedWithNames` output
format; an expectation holds when the result has exactly `rows` rows and the
named column has exactly `values`, in order. The statements are run as given
(nothing is rewritten). The same statements and expectations are also checked
against 18.16 by that Rust test.

Exit status: 0 when all pass, 1 on the first failure (naming the statement and
the error), 2 on bad usage or when chDB is missing.
"""

import json
import sys
import tempfile

# A file whose queries check nothing would prove little: require this many
# statements with expectations.
MIN_EXPECTATIONS = 2


def fail(index, sql, message):
    print(f"statement {index + 1} failed:\n{sql}\n\n{message}", file=sys.stderr)
    sys.exit(1)


def check(expect, output):
    """None when `output` (TabSeparatedWithNames) meets `expect`, else what differs."""
    lines = output.splitlines()
    if not lines:
        return f"no output at all (not even a header); expected {expect}"
    header = lines[0].split("\t")
    column = expect["column"]
    if column not in header:
        return f"no column {column!r} in the header {header}"
    index = header.index(column)
    values = [line.split("\t")[index] if index < len(line.split("\t")) else "" for line in lines[1:]]
    if len(values) != expect["rows"] or values != expect["values"]:
        return f"expected {expect['rows']} rows with {column} = {expect['values']}, got {values}"
    return None


def main(argv):
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    with open(argv[1], encoding="utf-8") as f:
        checks = json.load(f)
    if not isinstance(checks, list) or not all(isinstance(c, dict) and isinstance(c.get("sql"), str) for c in checks):
        print(f"{argv[1]}: expected a JSON array of {{\"sql\": ..., \"expect\": ...}} objects", file=sys.stderr)
        return 2
    expectations = sum(1 for c in checks if c.get("expect") is not None)
    if expectations < MIN_EXPECTATIONS:
        print(f"{argv[1]}: only {expectations} statements with expectations (at least {MIN_EXPECTATIONS})",
              file=sys.stderr)
        return 1
    try:
        from chdb import session as chs
        import chdb
    except ImportError as error:
        print(f"chDB is missing ({error}): pip install chdb-core", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="chdb-dialect-") as path:
        sess = chs.Session(path)
        version = str(sess.query("SELECT version()", "TabSeparated")).strip()
        try:
            for index, item in enumerate(checks):
                sql = item["sql"]
                try:
                    result = sess.query(sql, "TabSeparatedWithNames")
                except Exception as error:  # chDB raises its own error type per version
                    fail(index, sql, f"error: {error}")
                # Some chDB versions report errors on the result instead of raising.
                get_error = getattr(result, "error_message", None)
                error = get_error() if callable(get_error) else None
                if error:
                    fail(index, sql, f"error: {error}")
                expect = item.get("expect")
                if expect is not None:
                    problem = check(expect, str(result))
                    if problem:
                        fail(index, sql, problem)
        finally:
            sess.close()
    print(f"chDB {version} (chdb {getattr(chdb, '__version__', '?')}): {len(checks)} statements ran, "
          f"{expectations} results as expected", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

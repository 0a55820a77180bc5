"""`dafnck bench`: the platform measured against raw Ray, an entry point on top of everything.

`core` runs the suites and draws the table (`run_bench`, `SUITES`), `common` holds what the
suites share (the `Result` row, throughput, the raw actor), and `api`, `scale`,
`workflows`, `cache` and `hub` are the suites. Nothing outside bench imports it except
the CLI.
"""

"""The `dafnck` command line: an entry point on top of every other package.

`main` builds the Typer app (`dafnck = "cluster.cli.main:main"`); `cluster` (up, down,
status, bench), `agents`, `executions`, `auth`, `audit` and `obs` are its command groups,
`common` their shared options and output, `progress` the execution watcher, `init`,
`demo` and `llm_demo` the getting-started commands and `jobs` the Ray job submission. Nothing
outside cli imports it.
"""

"""Subcommands of the `seawall` CLI: one module each, discovered by `appliance.cli`.

A module here defines `register(subparsers)`, which adds its parser and sets
`func` (a callable taking the parsed args and returning an exit code).
"""

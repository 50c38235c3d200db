"""Command-line parsing that typer does not do for us: a command that is also a group
(`qrag train DATA` beside `qrag train eval ...`), and flags given a value by mistake."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from typer.core import TyperGroup

from qrag_cli.types import UsageError

_SUBCOMMAND_ARGS = "qrag.subcommand_args"
BOOL_WORDS = {"true", "false", "yes", "no", "on", "off", "1", "0"}


class RunOrSubcommand(TyperGroup):
    """A group that runs its own callback (`qrag train DATA --updates 5`) unless its first
    argument names one of its subcommands (`qrag train eval ...`).

    A plain click group parses its own positional DATA before it looks for a subcommand,
    so `eval` would become DATA; routing on the first word keeps both forms, and
    `qrag train --help` lists the subcommands beside the training options."""

    allow_interspersed_args = True  # `qrag train DATA --updates 5`: options after DATA

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        if args and args[0] in self.commands:
            ctx.meta[_SUBCOMMAND_ARGS] = list(args)
            ctx.args = []
            return []
        # The group's own run: parse like a command; anything left over is an error, not
        # a subcommand name.
        rest = super(TyperGroup, self).parse_args(ctx, args)
        if rest:
            ctx.fail(f"Got unexpected extra argument(s) ({' '.join(rest)})")
        return []

    def get_params(self, ctx: Any) -> list[Any]:
        params = super().get_params(ctx)
        if ctx.command is not self:  # a subcommand's usage line: `qrag train eval`, no [DATA]
            return [p for p in params if p.param_type_name != "argument"]
        return params

    def invoke(self, ctx: Any) -> Any:
        args = ctx.meta.pop(_SUBCOMMAND_ARGS, None)
        if args is None:
            return super(TyperGroup, self).invoke(ctx)  # the group's own callback
        with ctx:  # only the subcommand runs: the group's callback is the other form
            name, command, rest = self.resolve_command(ctx, args)
            ctx.invoked_subcommand = name
            with command.make_context(name, rest, parent=ctx) as sub_ctx:
                return command.invoke(sub_ctx)


def refuse_flag_values(root: Any, args: Sequence[str]) -> None:
    """`qrag ask --json true` would ask "true": a flag followed by a true/false word is
    refused at parse time instead (flags take no value; `--no-X` turns one off)."""
    command, start = root, 0
    while start < len(args) and args[start] in getattr(command, "commands", {}):
        command = command.commands[args[start]]
        start += 1
    flags = {
        opt
        for param in command.params
        if getattr(param, "is_flag", False)
        for opt in (*param.opts, *param.secondary_opts)
    }
    for arg, following in zip(args[start:], args[start + 1 :], strict=False):
        if arg == "--":
            return
        if arg in flags and following.lower() in BOOL_WORDS:
            raise UsageError(
                f"{arg} is a flag and takes no value: drop {following!r} (write {arg} alone)"
            )

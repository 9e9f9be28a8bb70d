"""A parser's arguments as plain data and as text: what the command-line reference shows.

:func:`describe` reads an :class:`argparse.ArgumentParser` into :class:`Group` and :class:`Argument`
records (every argument with its metavar, default, choices and help, group by group);
:func:`render_text` writes them as text. The Sphinx directive of :mod:`argparse_reference` builds the
docs' pages from the same records, so a test can check the reference against the parsers without
Sphinx.
"""

from __future__ import annotations

import argparse
import importlib
import re
from dataclasses import dataclass, field


#: A help text's own mention of its default, ``[%(default)s]`` or ``(default: %(default)g)`` at its end:
#: the reference shows every default on a line of its own.
_TRAILING_DEFAULT = re.compile(r"\s*[\[(](?:default:?\s*)?%\(default\)[a-z][\])]\s*$")


@dataclass
class Argument:
    """One argument of a parser, as the reference shows it."""

    names: list[str]
    metavar: str
    help: str
    default: str | None = None
    choices: list[str] | None = None

    @property
    def signature(self) -> str:
        """``--flag METAVAR`` (or the positional's name), every alias separated by a comma."""
        if not self.metavar:
            return ", ".join(self.names)
        return ", ".join(f"{name} {self.metavar}" if name.startswith("-") else name for name in self.names)


@dataclass
class Group:
    """An argument group: its title, its description and its arguments in the parser's order."""

    title: str
    description: str = ""
    arguments: list[Argument] = field(default_factory=list)


def load_parser(spec: str) -> argparse.ArgumentParser:
    """The parser that ``module:function`` (called without arguments) returns."""
    module_name, _, function_name = spec.partition(":")
    if not function_name:
        raise ValueError(f"argparse-reference takes module:function, got {spec!r}")
    return getattr(importlib.import_module(module_name), function_name)()


def _help(action: argparse.Action, prog: str) -> str:
    """The action's help with ``%(default)s`` and the like filled in, as ``--help`` prints it."""
    if not action.help or action.help == argparse.SUPPRESS:
        return ""
    text = _TRAILING_DEFAULT.sub("", action.help)
    params = {key: value for key, value in vars(action).items() if value is not argparse.SUPPRESS}
    params["prog"] = prog
    if params.get("choices") is not None:
        params["choices"] = ", ".join(map(str, params["choices"]))
    return text % params


def _metavar(action: argparse.Action) -> str:
    """What follows the flag: its metavar, else its destination in capitals (argparse's own choice)."""
    if action.nargs == 0:
        return ""
    if action.metavar is not None:
        return action.metavar if isinstance(action.metavar, str) else " ".join(action.metavar)
    return action.dest.upper()  # choices get a line of their own


def _default(action: argparse.Action) -> str | None:
    # None, False and SUPPRESS say nothing (an option without a value, a flag that is off); 0 does.
    default = action.default
    if action.nargs == 0 or default is None or default is False or default == argparse.SUPPRESS:
        return None
    if isinstance(default, (tuple, list)):
        return ",".join(map(str, default))
    return str(default)


def _arguments(action: argparse.Action, prog: str) -> list[Argument]:
    """The reference's entries for one action: one, or one per subcommand of a subparsers action."""
    if isinstance(action, argparse._SubParsersAction):
        return [Argument(names=[choice.dest], metavar="", help=choice.help or "")
                for choice in action._choices_actions]
    if isinstance(action, argparse._HelpAction):
        return [Argument(names=list(action.option_strings), metavar="", help="print this list and exit")]
    names = list(action.option_strings) or [action.metavar or action.dest]
    choices = [str(choice) for choice in action.choices] if action.choices is not None else None
    help_text = _help(action, prog)
    # A help that speaks of its default already says it better than the bare value (as --help does).
    default = None if "default" in help_text.lower() else _default(action)
    return [Argument(names=names, metavar=_metavar(action) if action.option_strings else "",
                     help=help_text, default=default, choices=choices)]


def describe(parser: argparse.ArgumentParser) -> list[Group]:
    """Every argument of ``parser``, by argument group, in the parser's order (empty groups left out)."""
    groups = []
    for action_group in parser._action_groups:
        group = Group(title=action_group.title or "arguments", description=action_group.description or "")
        for action in action_group._group_actions:
            group.arguments.extend(_arguments(action, parser.prog))
        if group.arguments:
            groups.append(group)
    return groups


def render_text(parser: argparse.ArgumentParser) -> str:
    """The reference as plain text: the usage, then each group with its arguments."""
    lines = [parser.format_usage().strip(), ""]
    if parser.description:
        lines += [parser.description, ""]
    for group in describe(parser):
        lines.append(group.title)
        if group.description:
            lines.append(f"  {group.description}")
        for argument in group.arguments:
            lines.append(f"  {argument.signature}")
            lines.extend(f"      {line}" for line in details(argument))
        lines.append("")
    if parser.epilog:
        lines.append(parser.epilog)
    return "\n".join(lines).rstrip() + "\n"


def details(argument: Argument) -> list[str]:
    """The lines the reference shows under an argument: its help, its choices, its default."""
    details = [argument.help] if argument.help else []
    if argument.choices is not None:
        details.append("choices: " + ", ".join(argument.choices))
    if argument.default is not None:
        details.append(f"default: {argument.default}")
    return details

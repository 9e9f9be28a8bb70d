"""Sphinx directive ``argparse-reference``: a command-line reference generated from the parser itself.

It takes ``module:function``, a function that returns an :class:`argparse.ArgumentParser`
(``wasap.run:build_parser``), and renders the parser: its usage, its description, and for each
argument group a section listing every argument with its metavar, default, choices and help
(:func:`argparse_text.describe`). In a MyST page::

    ```{argparse-reference} wasap.run:build_parser
    ```
"""

from __future__ import annotations

from docutils import nodes
from docutils.parsers.rst import directives
from sphinx.util.docutils import SphinxDirective

from argparse_text import Group, describe, details, load_parser


class ArgparseReference(SphinxDirective):
    """``argparse-reference module:function``: the parser's usage and its arguments, group by group."""

    required_arguments = 1
    option_spec = {"no-usage": directives.flag}

    def run(self) -> list[nodes.Node]:
        parser = load_parser(self.arguments[0])
        result: list[nodes.Node] = []
        if "no-usage" not in self.options:
            usage = parser.format_usage().strip()
            result.append(nodes.literal_block(usage, usage, language="text"))
        if parser.description:
            result.append(nodes.paragraph(text=parser.description))
        for group in describe(parser):
            result.append(self._section(parser.prog, group))
        if parser.epilog:
            result.append(nodes.paragraph(text=parser.epilog))
        return result

    def _section(self, prog: str, group: Group) -> nodes.section:
        section = nodes.section(ids=[nodes.make_id(f"{prog} {group.title}")])
        section += nodes.title(text=group.title)
        if group.description:
            section += nodes.paragraph(text=group.description)
        entries = nodes.definition_list()
        for argument in group.arguments:
            term = nodes.term()
            term += nodes.literal(text=argument.signature)
            definition = nodes.definition()
            for line in details(argument):
                definition += nodes.paragraph(text=line)
            entries += nodes.definition_list_item("", term, definition)
        section += entries
        return section


def setup(app):
    app.add_directive("argparse-reference", ArgparseReference)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}

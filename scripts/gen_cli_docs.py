"""Write the CLI reference (docs/cli.md) from the commands' own help text.

    python scripts/gen_cli_docs.py > docs/cli.md

`tests/test_docs.py` fails when docs/cli.md differs from this output.
"""

from __future__ import annotations

import click

from distillguard.cli import main


def render() -> str:
    lines = [
        "# CLI reference",
        "",
        "Generated from the code by `python scripts/gen_cli_docs.py > docs/cli.md`; do not edit.",
        "",
    ]

    def walk(command: click.Command, path: list[str]) -> None:
        name = " ".join(path)
        context = click.Context(command, info_name=name, terminal_width=88, max_content_width=88)
        lines.extend([f"## `{name}`", "", "```text", command.get_help(context), "```", ""])
        if isinstance(command, click.Group):
            for sub_name in command.list_commands(context):
                sub = command.get_command(context, sub_name)
                if sub is not None:
                    walk(sub, [*path, sub_name])

    walk(main, ["distillguard"])
    return "\n".join(lines)


if __name__ == "__main__":
    print(render(), end="")

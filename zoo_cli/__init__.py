"""The `zoo` command line: a thin layer above zoo (models, fine-tuning), export and serve, which read
their choices and defaults from those libraries. Heavy modules load inside commands.

Exit codes: 0 success, 1 a check ran and failed (validation, export parity), 2 a user mistake
(unknown model, missing file, bad input, bad flag), always with a one-line message."""

from __future__ import annotations

import sys

import click

from zoo.errors import ZooError
from zoo_cli.bundles import bench, export
from zoo_cli.finetune import finetune
from zoo_cli.models import fetch, info, list_command, pin, validate
from zoo_cli.serving import predict, serve_command


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="zoo")
@click.option("--require-pinned", is_flag=True,
              help="Refuse to fetch any file not pinned by a full sha256 in its entry or the lock (production builds; "
                   "also $ZOO_REQUIRE_PINNED=1).")
def cli(require_pinned: bool) -> None:
    """Pretrained backbones: fetch, validate, export to ONNX, predict without torch."""
    if require_pinned:
        import os

        from zoo.lock import REQUIRE_PINNED_ENV

        os.environ[REQUIRE_PINNED_ENV] = "1"


for command in (list_command, info, fetch, pin, validate, export, predict, finetune, serve_command, bench):
    cli.add_command(command)


def main(argv: list[str] | None = None) -> int:
    """Entry point: user mistakes become `zoo: error: ...` on stderr and exit 2, never a traceback."""
    from serve.errors import ServeError

    try:
        cli.main(args=argv, prog_name="zoo", standalone_mode=False)
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.exceptions.Abort:
        click.echo("zoo: aborted", err=True)
        return 130
    except click.ClickException as exc:
        hint = f" (see `{exc.ctx.command_path} --help`)" if getattr(exc, "ctx", None) else ""
        click.echo(f"zoo: error: {exc.format_message()}{hint}", err=True)
        return exc.exit_code
    except ZooError as exc:
        click.echo(f"zoo: error: {exc}", err=True)
        return exc.exit_code
    except ServeError as exc:
        click.echo(f"zoo: error: {exc}", err=True)
        return 2
    return 0



if __name__ == "__main__":
    sys.exit(main())

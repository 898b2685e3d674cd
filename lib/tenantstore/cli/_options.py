"""Options and argument types shared by the command groups."""

from __future__ import annotations

import argparse
import uuid

__all__ = ["Refused", "uuid_arg"]


class Refused(argparse.Action):
    """Takes a secret someone put on the command line, keeps only that it came.

    Its value is never stored nor echoed (argparse would print an unknown option's
    value in its error); `main` refuses the command.
    """

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: object,
        option_string: str | None = None,
    ) -> None:
        setattr(namespace, self.dest, True)


def uuid_arg(value: str) -> str:
    """An argparse type: any UUID spelling, returned in the canonical form.

    The message does not echo the value: a key pasted where an id belongs must not
    end up on a terminal or in a log.
    """
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise argparse.ArgumentTypeError("must be a UUID") from None

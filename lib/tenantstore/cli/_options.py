"""Options shared by the command groups that argparse has no action for."""

from __future__ import annotations

import argparse

__all__ = ["Refused"]


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

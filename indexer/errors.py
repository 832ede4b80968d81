"""The one error a person can act on: what is wrong, what to do about it, and the exit code.

Raise :class:`RamdexError` where the cause is known (a setting, an argument, a service that does
not answer), in words that name the setting or argument to change. The command line prints it as
one or two lines on stderr, without a traceback, and exits with :attr:`RamdexError.exit_code`
(``api/cli/errors.py``), as click does with its ``ClickException`` and pip with its own errors.
"""

from __future__ import annotations

#: Exit code of a command that could not run at all (bad settings or arguments, a database,
#: broker, device or model that is not there). Commands that ran but failed some items exit 1.
EXIT_UNUSABLE = 2


class RamdexError(Exception):
    """Something the person running ramdex can fix.

    Args:
        message: what is wrong, naming the setting or argument (``RAMDEX_DATABASE__URL``,
            ``--device``) and the value where that helps.
        hint: what to do next, when the message does not already say it.
        exit_code: the command's exit status (2: nothing could run).
    """

    def __init__(self, message: str, *, hint: str | None = None, exit_code: int = EXIT_UNUSABLE):
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.exit_code = exit_code

    def __str__(self) -> str:
        return f"{self.message}; {self.hint}" if self.hint else self.message

    def lines(self) -> list[str]:
        """The message as a person reads it: ``error: ...`` and, if any, ``hint: ...``."""
        return [f"error: {self.message}"] + ([f"hint: {self.hint}"] if self.hint else [])

"""Every way the sandbox can say no is a :class:`SandboxError`; ``reason`` says why."""

from __future__ import annotations


class SandboxError(RuntimeError):
    """The code could not run to a valid result; ``reason`` says why (sanitised, bounded)."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class SandboxRefused(SandboxError):
    """The code was refused by the static checks and never ran."""


class SandboxUnavailable(SandboxError):
    """The OS isolation layer cannot be had on this machine, so spatial code is off (fail closed)."""

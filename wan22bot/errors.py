"""Errors a user can act on. Each carries one human sentence; the CLI prints it without a traceback."""

from __future__ import annotations


class Wan22Error(Exception):
    """Base for errors whose message is meant for the person running wan22bot."""

    exit_code = 1


class ConfigError(Wan22Error):
    """The configuration file or a command-line option is invalid."""

    exit_code = 2


class InputError(Wan22Error):
    """A photo (or job option) cannot be processed; the job fails, the daemon keeps going."""

    exit_code = 3


class ModelError(Wan22Error):
    """Model files are missing or unusable."""

    exit_code = 4


class OutOfMemory(Wan22Error):
    """The device ran out of memory; the message says what to lower."""

    exit_code = 5


class Cancelled(Wan22Error):
    """The job was cancelled at a step boundary."""

    exit_code = 6


class DiskFull(Wan22Error):
    """Writing the output failed for lack of space."""

    exit_code = 7

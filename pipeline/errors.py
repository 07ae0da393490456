"""Errors that the command line turns into clear messages and exit codes.

Exit codes: 0 success, 1 the work failed (a stage raised, a movie could not be
processed), 2 the request was wrong (bad config, bad input file, bad arguments).
"""


class UptrackError(Exception):
    """A failure with a message written for the user; exit code 1."""

    exit_code = 1


class InputError(UptrackError):
    """Bad user input (config field, movie file, argument); exit code 2.

    The message names the file, the field and the fix.
    """

    exit_code = 2

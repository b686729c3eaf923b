"""One error type for everything a user can get wrong (files, configs, prompts).

The CLI prints the message and exits with status 2; nothing else is caught, so a
bug in the engine still shows a traceback.
"""


class MtpRefError(Exception):
    """A problem with the user's input: the message names the file/tensor/field and what to do."""

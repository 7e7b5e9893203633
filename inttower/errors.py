"""User-facing errors: the CLI prints their message as one line, with no traceback."""


class UserError(Exception):
    """An error in what the user gave us (config, data, arguments) that they can act on."""


class ConfigError(UserError):
    """A config file is invalid; the message names the file, the key path and what was expected."""

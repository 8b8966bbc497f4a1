"""The errors a user fixes by changing a file, a setting or a flag. Each message names the file,
the setting or the row and says what to change; the command line prints it without a traceback."""


class UserError(ValueError):
    """Something the user can fix; the message says what and where."""


class ConfigError(UserError):
    """A config file that cannot be used; the message names the file and the offending paths."""


class DataError(UserError):
    """A QA set or corpus that cannot be used as it is; the message names the file and rows."""


class ModelError(UserError):
    """A model that cannot be found or loaded; the message says where it was looked for."""


class StudyError(UserError):
    """A study that cannot continue as asked (e.g. its config or its models changed since it started)."""

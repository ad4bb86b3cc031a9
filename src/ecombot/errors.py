"""User-facing errors: the CLI prints these as one clear line, without a traceback."""


class EcombotError(Exception):
    """An error the user can fix (bad file, missing model, bad config)."""


class DataError(EcombotError):
    """A data file or row is malformed; the message names the file, line/row and field."""

    def __init__(self, path, where, field, problem):
        self.path, self.where, self.field, self.problem = str(path), where, field, problem
        loc = f"{self.path}:{where}" if where else self.path
        field_part = f" field '{field}':" if field else ""
        super().__init__(f"{loc}:{field_part} {problem}")


class ModelError(EcombotError):
    """A base model or adapter cannot be found or loaded."""


class ConfigError(EcombotError):
    """A config file or flag has an unknown key or a bad value."""

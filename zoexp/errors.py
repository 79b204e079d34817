"""The one error type for bad user input: it names the config field and what is allowed."""


class ConfigError(ValueError):
    """Bad input, found before any model loads. Printed as one line: `<field>: <message>`."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        self.message = message
        super().__init__(f"{field}: {message}")

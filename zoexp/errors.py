"""The error types a run ends with, each printed as one line (`error: ...`) by `zoexp.run`.

Exit codes: 2 bad input or a run directory that cannot be used (found before any model
loads, no run directory left behind); 3 training diverged; 143 stopped by SIGTERM (a
checkpoint was written, rerun the same command to resume); 1 anything else.
"""


class ConfigError(ValueError):
    """Bad input, found before any model loads. Printed as one line: `<field>: <message>`."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        self.message = message
        super().__init__(f"{field}: {message}")


class RunDirError(ConfigError):
    """The run directory belongs to someone else (another process, another configuration)
    or cannot be written. Unlike other ConfigErrors, the directory is never removed."""


class Diverged(RuntimeError):
    """A non-finite loss or projected gradient at `step`; raised before that step's update."""

    def __init__(self, step: int, what: str, value, applied: bool = False) -> None:
        """`applied`: found only after the solver applied the update (it cannot be skipped)."""
        self.step, self.what, self.value, self.applied = step, what, value, applied
        self.summary: dict | None = None  # what the loop wrote to summary.json
        super().__init__(f"training diverged at step {step}: {what} is {value}")


class Terminated(RuntimeError):
    """SIGTERM received; the loop stopped at a step boundary (after a checkpoint)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)

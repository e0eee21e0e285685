"""One exception base so the CLI needs a single `except` and a documented exit code per kind."""


class FedtwinError(Exception):
    """Any failure fedtwin reports to the user as one line; exit code 1."""

    exit_code = 1


class ConfigError(FedtwinError):
    """Bad user input (config, fleet file, flags): nothing was written; exit code 2."""

    exit_code = 2


class StoreError(FedtwinError):
    """The artifact store could not be read or written."""


class IntegrityError(StoreError):
    """A stored object does not match its recorded sha256 (corrupt or tampered)."""


class RunLockedError(FedtwinError):
    """Another runner is running this run; exit code 1: rerunning once it has finished works."""


class RunConflictError(FedtwinError):
    """A run id is reused with a different config, or a run is in a state that forbids the request."""

    exit_code = 2


class QuorumError(FedtwinError):
    """Fewer valid updates than `min_twins`: the round (and the run) fails; exit code 3.

    Its own code lets a workflow engine tell it from transient failures and not retry it.
    """

    exit_code = 3

"""One exception hierarchy for the whole package.

The CLI turns any `SecureFedRLError` into a one-line message and exit code 2; anything else is a
bug and keeps its traceback.
"""


class SecureFedRLError(Exception):
    """Base class of every error the package raises on purpose."""


class ConfigError(SecureFedRLError):
    """A federation config (or a command-line value) is malformed."""


class ProtocolError(SecureFedRLError):
    """A protocol message is invalid: bad signature, replay, wrong round, wrong length, ..."""


class BelowThresholdError(ProtocolError):
    """Fewer live sites than the threshold: the round aborts and nothing is released."""


class UpdateRejected(SecureFedRLError):
    """A site's update is unusable (NaN/Inf, wrong length, out of bounds) and is dropped."""


class PrivacyError(SecureFedRLError):
    """A privacy parameter is invalid or a guarantee cannot be met."""


class PrivacyBudgetExceeded(PrivacyError):
    """The next round would spend more privacy than the federation's budget allows."""


class LedgerError(SecureFedRLError):
    """The privacy ledger is corrupt (broken hash chain, bad signature, missing row)."""


class RunDirectoryError(SecureFedRLError):
    """A run directory cannot be used (e.g. `--resume` with a different config)."""

"""The privacy ledger: append-only, hash-chained, Ed25519-signed record of every round's spend.

Format (byte-for-byte, for independent auditors): FORMAT.md in this folder.
"""

from secure_fedrl.ledger.format import (
    GENESIS_HASH,
    LedgerChainError,
    LedgerEntry,
    LedgerRow,
    SignedHead,
    canonical_bytes,
    head_bytes,
    row_hash,
    verify_chain,
)
from secure_fedrl.ledger.store import (
    KEY_FILE,
    LEDGER_FILE,
    PASSPHRASE_ENV,
    PUBLIC_KEY_FILE,
    PrivacyLedger,
    default_key_dir,
    load_signing_key,
    read_ledger,
    read_passphrase,
    read_witnesses,
)
from secure_fedrl.ledger.witness import (
    WITNESS_DOMAIN,
    sign_witness,
    verify_witness,
    witness_message,
)

__all__ = [
    "GENESIS_HASH",
    "KEY_FILE",
    "LEDGER_FILE",
    "PASSPHRASE_ENV",
    "PUBLIC_KEY_FILE",
    "LedgerChainError",
    "LedgerEntry",
    "LedgerRow",
    "PrivacyLedger",
    "SignedHead",
    "canonical_bytes",
    "default_key_dir",
    "load_signing_key",
    "read_passphrase",
    "head_bytes",
    "read_ledger",
    "row_hash",
    "read_witnesses",
    "sign_witness",
    "verify_chain",
    "verify_witness",
    "WITNESS_DOMAIN",
    "witness_message",
]

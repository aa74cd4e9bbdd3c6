"""The auditor's package: tools a third party runs on a run directory or a federation config.

`verify_ledger` re-implements the ledger format from FORMAT.md and imports nothing of
secure_fedrl (an auditor must not trust the code it audits). `canary` runs the training it audits
through secure_fedrl but computes its statistics itself.
"""

"""Child process for the crash test: append rows forever, printing each seq once append returned.

The header line reports the live connection's PRAGMA synchronous: a SIGKILL cannot show lost
durability (the OS still holds the written pages), so the parent checks the setting itself.
"""

import sys

from secure_fedrl.ledger import LedgerEntry, PrivacyLedger

path, config_hash, key_dir = sys.argv[1], sys.argv[2], sys.argv[3]
limit = int(sys.argv[4]) if len(sys.argv) > 4 else 100_000
led = PrivacyLedger.open(path, config_hash=config_hash, key_dir=key_dir)  # verifies the last kill's chain
nxt = (led.last_round() if led.last_round() is not None else -1) + 1
eps = led.cumulative_epsilon().get("rdp", 0.0)
sync = led._conn.execute("PRAGMA synchronous").fetchone()[0]
sys.stdout.write(f"open {len(led.rows())} sync {sync}\n")
sys.stdout.flush()
for r in range(nxt, nxt + limit):
    eps += 0.01
    row = led.append(LedgerEntry(round=r, unit="client", mechanism="gaussian", clip=1.0,
                                 sigma_planned=1.0, sigma_effective=1.0, sample_rate=0.05,
                                 sites_planned=10, sites_survived=10, accountant="rdp",
                                 epsilon={"rdp": eps}, delta=1e-5))
    sys.stdout.write(f"{row.seq}\n")
    sys.stdout.flush()
    # The pragma of the connection that just appended (a later PRAGMA could have changed it).
    if led._conn.execute("PRAGMA synchronous").fetchone()[0] not in (2, 3):
        sys.stdout.write("SYNC-LOWERED\n")
        sys.stdout.flush()
led.close()

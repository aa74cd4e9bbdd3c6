"""Child process for the crash test: append rows forever, printing each seq once append returned."""

import sys

from secure_fedrl.ledger import LedgerEntry, PrivacyLedger

path, config_hash = sys.argv[1], sys.argv[2]
led = PrivacyLedger.open(path, config_hash=config_hash)  # verifies the chain left by the last kill
nxt = (led.last_round() if led.last_round() is not None else -1) + 1
eps = led.cumulative_epsilon().get("rdp", 0.0)
sys.stdout.write(f"open {len(led.rows())}\n")
sys.stdout.flush()
for r in range(nxt, nxt + 100_000):
    eps += 0.01
    row = led.append(LedgerEntry(round=r, unit="client", mechanism="gaussian", clip=1.0,
                                 sigma_planned=1.0, sigma_effective=1.0, sample_rate=0.05,
                                 sites_planned=10, sites_survived=10, accountant="rdp",
                                 epsilon={"rdp": eps}, delta=1e-5))
    sys.stdout.write(f"{row.seq}\n")
    sys.stdout.flush()

-- Budgets enforced before the request (tenantstore's BudgetGuard).
--
-- budget_leases: the share of a tenant's monthly budget each gateway process
-- (holder) may grant reservations from without asking the database. A guard changes
-- its row only in two ways: a lease step, under pg_advisory_xact_lock on the
-- tenant, that sets `amount` so that this month's spend plus every live lease stays
-- within budget_usd; and a settle, in the transaction that inserts the usage
-- record, that lowers `amount` by what the record consumed. A row whose
-- `expires_at` has passed (by the guards' clock) is dead: its holder crashed or
-- stopped renewing, and the next lease step of the tenant deletes it. `lean` says
-- the holder keeps no idle share (its amount is what its reservations hold), and
-- `short_at` when the holder last had to refuse for want of budget, which asks
-- every other holder to go lean. See the README, "Budgets".
CREATE TABLE budget_leases (
    tenant_id uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    holder text NOT NULL,
    period date NOT NULL,
    amount numeric NOT NULL,
    lean boolean NOT NULL DEFAULT false,
    short_at timestamptz,
    expires_at timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, holder)
);

-- Each budget alert fires once per tenant, month and level across every process:
-- the process whose INSERT ... ON CONFLICT DO NOTHING returns a row calls the
-- callbacks; the others see nothing returned and stay silent.
CREATE TABLE budget_alerts (
    tenant_id uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    period date NOT NULL,
    level text NOT NULL CHECK (level IN ('warning', 'critical', 'exceeded')),
    fired_at timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, period, level)
);

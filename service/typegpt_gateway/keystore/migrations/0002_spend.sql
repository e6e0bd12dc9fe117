-- Version 2: spend in dollars (issue 15).
--
-- Costs are integers in micro-dollars (1e-6 USD), so that sums are exact in both dialects.
-- A request whose model has no price adds nothing to cost_micro_usd and counts in
-- unpriced_requests instead: its cost is unknown, never 0. A request whose usage the gateway
-- estimated (the upstream's usage never came) counts in estimated_requests as well.

ALTER TABLE usage ADD COLUMN cost_micro_usd {integer} NOT NULL DEFAULT 0;

ALTER TABLE usage ADD COLUMN unpriced_requests {integer} NOT NULL DEFAULT 0;

ALTER TABLE usage ADD COLUMN estimated_requests {integer} NOT NULL DEFAULT 0;

-- A key's budget in micro-dollars per budget_period (the period it shares with budget_tokens).
ALTER TABLE keys ADD COLUMN budget_usd_micro {integer};

-- The whole gateway's usage since a day (the admin usage route) reads by day, not by key.
CREATE INDEX IF NOT EXISTS usage_day ON usage(day);

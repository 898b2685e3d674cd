-- Outstanding leases and the record of fired alerts go: guards still running start
-- from nothing (no lease held, no alert fired this month).
DROP TABLE budget_alerts;
DROP TABLE budget_leases;

-- Reverses 001_initial, as the original service's own down file does.
DROP TABLE IF EXISTS usage_records;
DROP TABLE IF EXISTS admin_users;
DROP TABLE IF EXISTS tenants;

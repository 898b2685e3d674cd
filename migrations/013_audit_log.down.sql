-- Drops the audit log and its triggers: the entries are lost.
DROP TRIGGER IF EXISTS tenantstore_admin_users_audit_truncate ON admin_users;
DROP TRIGGER IF EXISTS tenantstore_admin_users_audit_update ON admin_users;
DROP TRIGGER IF EXISTS tenantstore_admin_users_audit_insert_delete ON admin_users;
DROP TRIGGER IF EXISTS tenantstore_tenants_audit_truncate ON tenants;
DROP TRIGGER IF EXISTS tenantstore_tenants_audit_update ON tenants;
DROP TRIGGER IF EXISTS tenantstore_tenants_audit_insert_delete ON tenants;
DROP FUNCTION IF EXISTS tenantstore_audit();
DROP TABLE IF EXISTS audit_log;

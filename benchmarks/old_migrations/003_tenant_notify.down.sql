-- Reverses 003_tenant_notify: no more notifications on tenants.
DROP TRIGGER tenantstore_tenants_notify_truncate ON tenants;
DROP TRIGGER tenantstore_tenants_notify_update ON tenants;
DROP TRIGGER tenantstore_tenants_notify_insert_delete ON tenants;
DROP FUNCTION tenantstore_notify_tenant_change();

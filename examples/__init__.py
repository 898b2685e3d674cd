"""Examples of tenantstore in an application (run from a checkout)."""

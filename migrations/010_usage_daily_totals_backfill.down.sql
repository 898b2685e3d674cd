-- Reverses 010_usage_daily_totals_backfill: nothing to undo. The totals stay exact
-- (009's triggers keep them), and running 010 again recomputes them.
SELECT 'nothing to undo';

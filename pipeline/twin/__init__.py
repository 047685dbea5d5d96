"""Stage `usd_twin`: the workcell as one OpenUSD stage, checked by physics (docs/twin.md)."""

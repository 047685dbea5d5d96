"""Stage `sim_workcell`: the simulated SO-101 workcell (the stand-in for the real cell), its runtime and the
scripted expert (docs/workcell.md)."""

"""systolic.sim: see ../shared/DESIGN.md section 1."""

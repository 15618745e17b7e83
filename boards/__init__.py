"""systolic.boards: see ../shared/DESIGN.md section 1."""

"""systolic.rtl: see ../shared/DESIGN.md section 1."""

"""ERA5 stages: acquire (cds, arco, synthetic) -> regrid -> assemble."""

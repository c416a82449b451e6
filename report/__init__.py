"""What a person reads: the single-run page, the study page (report.html / report.md), figures, the headline."""
